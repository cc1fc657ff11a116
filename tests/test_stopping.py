"""Early stopping counted in optimiser steps (bench/training/stopping.py), on generated data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fusebench.strategies import STRATEGIES, FusionSpec
from fusebench.training.loop import Batch, TrainConfig, train_model
from fusebench.training.stopping import EarlyStopper, StopRule, nll


def test_never_stops_before_min_steps_even_without_improvement():
    stopper = EarlyStopper(StopRule(patience=1, min_steps=100))
    stopper.update(1.0, 0.0, step=3)
    for step in range(6, 100, 3):
        stopper.update(1.0, 0.0, step)  # flat: no improvement
        assert not stopper.should_stop(step)
    stopper.update(1.0, 0.0, 102)
    assert stopper.should_stop(102)


def test_patience_needs_both_evaluations_and_steps():
    stopper = EarlyStopper(StopRule(patience=2, patience_steps=30))
    stopper.update(1.0, 0.0, 10)
    stopper.update(2.0, 0.0, 13)
    stopper.update(2.0, 0.0, 16)  # 2 evaluations old, but only 6 steps
    assert not stopper.should_stop(16)
    stopper.update(2.0, 0.0, 40)  # 30 steps old
    assert stopper.should_stop(40)


def test_min_delta_ignores_tiny_improvements_and_monitor_metric():
    stopper = EarlyStopper(StopRule(patience=1, min_delta=0.01))
    assert stopper.update(1.0, 0.0, 1)
    assert not stopper.update(0.995, 0.0, 2)  # below min_delta
    assert stopper.update(0.98, 0.0, 3)
    assert stopper.best_step == 3
    by_metric = EarlyStopper(StopRule(patience=1, monitor="val_metric"))
    by_metric.update(5.0, 0.2, 1)
    assert by_metric.update(9.0, 0.5, 2)  # metric up, loss ignored


def test_epoch_budget_grows_to_fit_min_steps():
    assert StopRule(min_steps=200).epochs_for(12, steps_per_epoch=3) == 67
    assert StopRule(min_steps=200).epochs_for(12, steps_per_epoch=100) == 12


def test_nll_is_the_mean_negative_log_likelihood():
    probs = np.array([[0.5, 0.5], [0.9, 0.1]])
    assert nll(np.array([0, 1]), probs) == pytest.approx(-(np.log(0.5) + np.log(0.1)) / 2)


def test_bad_rule_is_an_error():
    with pytest.raises(ValueError, match="monitor"):
        StopRule(monitor="accuracy")  # type: ignore[arg-type]


def _many_class_task(n: int, seed: int, classes: int = 25) -> Batch:
    """ESC-50-like: many classes, few rows per class; the class is a direction in feature space."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, 32, generator=torch.Generator().manual_seed(99)) * 1.5
    y = torch.arange(n) % classes
    a = centres[y] + torch.randn(n, 32, generator=g)
    return Batch({"a": a[:, :16], "b": a[:, 16:]}, y)


def test_tiny_task_does_not_restore_the_first_epoch(one_thread):
    """3 optimiser steps per epoch, 2 validation rows per class: with patience counted in epochs of
    accuracy the stacking model stopped at once (the ESC-50 defect); the step-counted rule trains on."""
    spec = FusionSpec({"a": 16, "b": 16}, {"a": 1, "b": 1}, 25)
    train, val = _many_class_task(300, 0), _many_class_task(50, 1)
    old = TrainConfig(epochs=12, patience=3, batch_size=128, monitor="val_metric")
    new = TrainConfig(epochs=12, patience=3, batch_size=128, patience_steps=60, min_steps=150, min_delta=1e-3)
    torch.manual_seed(0)
    before = train_model(STRATEGIES.get("stacking").build(spec), train, val, old, "accuracy", seed=0)
    torch.manual_seed(0)
    after = train_model(STRATEGIES.get("stacking").build(spec), train, val, new, "accuracy", seed=0)
    assert after.steps_run >= 150 and after.best_step > 30 and after.best_epoch >= 10
    assert after.best_step > before.best_step and after.val_metric > before.val_metric
    assert after.val_metric > 0.3  # well above chance (0.04)
