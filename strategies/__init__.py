"""Fusion strategies, one module per kind; importing this package registers them all."""

from fusebench.strategies import (  # noqa: F401  (registration side effects)
    bilinear,
    bottleneck,
    crossmodal,
    early,
    late,
    mid,
    separate,
    unimodal,
)
from fusebench.strategies.base import STRATEGIES, FusionModel, FusionSpec, StrategyInfo, register_strategy

__all__ = ["STRATEGIES", "FusionModel", "FusionSpec", "StrategyInfo", "register_strategy"]

from fusebench.core.plugins import load_plugins

load_plugins("fusebench.strategies")  # installed entry points and $FUSEBENCH_PLUGINS / --plugin files
