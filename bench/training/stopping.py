"""Early stopping that cannot stop before learning.

Why: patience counted in epochs stops tiny tasks before training starts. An ESC-50 epoch is 3
optimiser steps and its validation set has ~50 clips for 50 classes, so validation accuracy is a
step function that rarely moves in the first epochs: with patience 3 epochs every stacking seed
restored epoch 0 (9 optimiser steps), scoring below the `random` floor.

The rule (README "Protocol"):
- the stopping quantity is the validation loss (mean negative log-likelihood of the true class),
  which moves smoothly even on a small validation set; `monitor="val_metric"` uses the main metric;
- an evaluation improves on the best only by more than `min_delta` (absolute);
- training stops when the last improvement is at least `patience` evaluations *and*
  `patience_steps` optimiser steps old, and never before `min_steps` optimiser steps;
- the epoch budget is extended, if needed, so that `min_steps` steps fit
  (`epochs_for(steps_per_epoch)`); the weights of the best evaluation are restored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

Monitor = Literal["val_loss", "val_metric"]


@dataclass(frozen=True)
class StopRule:
    """When to stop training (see the module docstring)."""

    patience: int = 5  # evaluations (one per epoch) without improvement
    patience_steps: int = 0  # ... and at least this many optimiser steps without improvement
    min_steps: int = 0  # never stop (and keep training past `epochs`) before this many steps
    min_delta: float = 0.0  # an improvement must exceed this (absolute, in the monitored quantity)
    monitor: Monitor = "val_loss"

    def __post_init__(self) -> None:
        if self.patience < 1 or self.patience_steps < 0 or self.min_steps < 0 or self.min_delta < 0:
            raise ValueError(f"patience >= 1 and patience_steps, min_steps, min_delta >= 0 required: {self}")
        if self.monitor not in ("val_loss", "val_metric"):
            raise ValueError(f"monitor must be 'val_loss' or 'val_metric', got {self.monitor!r}")

    def epochs_for(self, epochs: int, steps_per_epoch: int) -> int:
        """The epoch budget: `epochs`, raised so that at least `min_steps` optimiser steps fit."""
        return max(epochs, math.ceil(self.min_steps / max(steps_per_epoch, 1)))


def nll(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class (probabilities clipped at 1e-12)."""
    picked = probs[np.arange(len(labels)), labels.astype(np.int64)]
    return float(-np.log(np.clip(picked, 1e-12, 1.0)).mean())


class EarlyStopper:
    """Tracks the best evaluation; `update` says whether it improved, `should_stop` applies the rule."""

    def __init__(self, rule: StopRule) -> None:
        self.rule = rule
        self.best = math.inf  # lower is better: loss, or minus the metric
        self.best_eval = -1
        self.best_step = 0
        self.evals = 0

    def update(self, loss: float, metric: float, step: int) -> bool:
        value = loss if self.rule.monitor == "val_loss" else -metric
        if not np.isfinite(value):
            value = math.inf
        improved = self.best_eval < 0 or value < self.best - self.rule.min_delta
        if improved:
            self.best, self.best_eval, self.best_step = value, self.evals, step
        self.evals += 1
        return improved

    def should_stop(self, step: int) -> bool:
        since_evals = self.evals - 1 - self.best_eval
        return (
            step >= self.rule.min_steps
            and since_evals >= self.rule.patience
            and step - self.best_step >= self.rule.patience_steps
        )
