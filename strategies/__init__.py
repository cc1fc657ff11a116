"""Fusion strategies, one module per family; importing this package registers them all."""

from fusebench.strategies.base import STRATEGIES, FusionModel, FusionSpec, StrategyInfo, register_strategy

from fusebench.strategies import early, late, mid, unimodal  # noqa: E402,F401  (registration side effects)

__all__ = ["STRATEGIES", "FusionModel", "FusionSpec", "StrategyInfo", "register_strategy"]
