"""Metrics by name. Each takes labels `[N]` and class probabilities `[N, C]` (numpy) → float."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from fusebench.core.registry import Registry

Metric = Callable[[np.ndarray, np.ndarray], float]
METRICS: Registry[Metric] = Registry("metric")


@METRICS.register("accuracy")
def accuracy(labels: np.ndarray, probs: np.ndarray) -> float:
    return float(accuracy_score(labels, probs.argmax(1)))


@METRICS.register("macro_f1")
def macro_f1(labels: np.ndarray, probs: np.ndarray) -> float:
    return float(f1_score(labels, probs.argmax(1), average="macro", zero_division=0))


@METRICS.register("auroc")
def auroc(labels: np.ndarray, probs: np.ndarray) -> float:
    """Binary: AUROC of P(class 1). Multi-class: one-vs-rest macro AUROC. 0.5 when undefined."""
    if len(np.unique(labels)) < 2:
        return 0.5
    if probs.shape[1] == 2:
        return float(roc_auc_score(labels, probs[:, 1]))
    return float(roc_auc_score(labels, probs, multi_class="ovr", labels=list(range(probs.shape[1]))))


RANGES: dict[str, tuple[float, float]] = {"accuracy": (0.0, 1.0), "macro_f1": (0.0, 1.0), "auroc": (0.0, 1.0)}
"""The values each bounded metric can take; intervals are clipped to them (results.stats)."""


def metric_range(name: str) -> tuple[float, float]:
    """(low, high) a metric can take; (-inf, inf) for a metric without a declared range (a plugin's)."""
    return RANGES.get(name, (float("-inf"), float("inf")))


def compute(names: tuple[str, ...] | list[str], labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    return {n: METRICS.get(n)(labels, probs) for n in names}
