"""Training, search and records on generated tensors (tiny, fast, and able to fail)."""

from __future__ import annotations

import optuna
import pytest
import torch

from fusebench.results.records import Record, Throughput, load_records, merge_records, write_records
from fusebench.search import stale
from fusebench.search.stale import fail_stale_running
from fusebench.search.study import Budget, open_study, run_search
from fusebench.strategies import STRATEGIES, FusionSpec
from fusebench.training.loop import Batch, TrainConfig, predict_proba, train_model


def _separable(n: int, seed: int) -> Batch:
    """Class = sign of (a·w + b·v): needs both modalities, learnable by every fusion family."""
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(n, 16, generator=g), torch.randn(n, 12, generator=g)
    y = ((a[:, 0] + b[:, 0]) > 0).long()
    return Batch({"a": a, "b": b}, y)


SPEC = FusionSpec({"a": 16, "b": 12}, {"a": 1, "b": 1}, 2)


@pytest.mark.parametrize("name", ["concat", "gmu"])
def test_training_learns_a_two_modality_rule(name):
    torch.manual_seed(0)
    model = STRATEGIES.get(name).build(SPEC)
    result = train_model(model, _separable(512, 0), _separable(256, 1), TrainConfig(epochs=30, patience=30, batch_size=64),
                         "accuracy", seed=0)
    test = _separable(256, 2)
    acc = (predict_proba(model, test.inputs).argmax(1) == test.labels.numpy()).mean()
    # One modality alone caps at 0.75 on this rule (P[sign(a0) = sign(a0 + b0)]), so > 0.8 shows fusion.
    assert acc > 0.8, f"{name} reached only {acc:.3f}"
    assert result.val_metric > 0.8 and 0 <= result.best_epoch < result.epochs_run
    assert result.train_samples_per_s > 0


def test_early_stopping_restores_the_best_epoch():
    torch.manual_seed(0)
    model = STRATEGIES.get("concat").build(SPEC)
    result = train_model(model, _separable(64, 0), _separable(64, 1), TrainConfig(epochs=40, patience=3, batch_size=16),
                         "accuracy", seed=0)
    assert result.epochs_run <= 40 and result.epochs_run - result.best_epoch <= 4
    val = _separable(64, 1)
    restored = (predict_proba(model, val.inputs).argmax(1) == val.labels.numpy()).mean()
    assert restored == pytest.approx(result.val_metric)


def test_majority_baseline_predicts_the_training_prior():
    model = STRATEGIES.get("majority").build(SPEC)
    train = Batch({"a": torch.zeros(10, 16), "b": torch.zeros(10, 12)}, torch.tensor([1] * 7 + [0] * 3))
    result = train_model(model, train, train, TrainConfig(), "accuracy", seed=0)
    assert result.epochs_run == 0 and result.val_metric == pytest.approx(0.7)


def test_search_resumes_and_counts_budget(tmp_path, monkeypatch):
    storage = f"sqlite:///{tmp_path / 's.db'}"
    calls = []

    def objective(trial: optuna.Trial) -> float:
        calls.append(trial.number)
        return trial.suggest_float("x", 0, 1)

    budget = Budget(trials=3, timeout_s=60, seeds=1)
    run_search(open_study("t/x", storage, 0), objective, budget)
    assert calls == [0, 1, 2]
    run_search(open_study("t/x", storage, 0), objective, budget)  # already complete: nothing runs
    assert calls == [0, 1, 2]
    study = open_study("t/x", storage, 0)
    study.ask()  # a trial left RUNNING, as a killed process leaves it
    monkeypatch.setattr(stale, "ATTRLESS_GRACE_S", 0.0)  # ... a minute ago (a younger one may be a live process's)
    assert fail_stale_running(open_study("t/x", storage, 0)) == 1
    states = [t.state for t in open_study("t/x", storage, 0).trials]
    assert states.count(optuna.trial.TrialState.FAIL) == 1 and states.count(optuna.trial.TrialState.COMPLETE) == 3


def test_search_and_eval_seeds_are_disjoint():
    b = Budget(trials=50, timeout_s=1, seeds=5, search_seed=0)
    assert b.eval_seeds == [1000, 1001, 1002, 1003, 1004]
    assert not set(b.eval_seeds) & set(range(b.trials))


def _record(strategy: str, seed: int | None, status: str = "ok") -> Record:
    tp = Throughput(1.0, 2.0, 3.0, 4.0, 5.0, 6.0, "cpu_peak_rss", 8, 30)
    return Record(dataset="d", task="classification", strategy=strategy, family="early", modalities=["a"], seed=seed,
                  status=status, main_metric=0.5, throughput=tp if status == "ok" else None)


def test_records_round_trip_and_merge_replaces_failures(tmp_path):
    path = tmp_path / "results.jsonl"
    write_records(path, [_record("x", None, "failed"), _record("y", 1)])
    loaded = load_records(path)
    assert loaded == [_record("x", None, "failed"), _record("y", 1)]
    merged = merge_records(loaded, [_record("x", 1), _record("x", 2), _record("y", 1)])
    assert [(r.strategy, r.seed, r.status) for r in merged] == [("x", 1, "ok"), ("x", 2, "ok"), ("y", 1, "ok")]


def test_truncated_last_line_is_skipped(tmp_path):
    path = tmp_path / "results.jsonl"
    write_records(path, [_record("y", 1)])
    with open(path, "a") as fh:
        fh.write('{"dataset": "d", "strat')
    assert len(load_records(path)) == 1
