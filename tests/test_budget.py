"""Honest budgets and search replicates (bench/search/study.py), with real optuna studies."""

from __future__ import annotations

import datetime as real_datetime
import json
from types import SimpleNamespace

import optuna
import pandas as pd
import pytest

from fusebench.cli import main
from fusebench.results.records import Record, load_records, merge_records
from fusebench.search.study import (
    Budget,
    fail_stale_running,
    open_study,
    replicate_study_name,
    run_search,
    trial_counts,
)


def test_failed_trials_use_the_budget_and_are_counted(tmp_path):
    """Injected fault: every third trial's training raises. Before, failures were retried without
    counting, so a strategy that fails often silently got more attempts than one that never fails."""
    storage = f"sqlite:///{tmp_path / 's.db'}"
    calls = []

    def objective(trial: optuna.Trial) -> float:
        calls.append(trial.number)
        x = trial.suggest_float("x", 0, 1)
        if trial.number % 3 == 1:
            raise RuntimeError("out of memory (injected)")
        return x

    budget = Budget(trials=6, timeout_s=60, seeds=1)
    study, _ = run_search(open_study("t/f", storage, 0), objective, budget)
    counts = trial_counts(study, budget.trials)
    assert len(calls) == 6  # six attempts in all, failures included
    assert (counts.complete, counts.pruned, counts.failed, counts.spent) == (4, 0, 2, 6)


def test_a_dead_process_trial_is_retried_not_counted(tmp_path, monkeypatch):
    from fusebench.search import stale

    monkeypatch.setattr(stale, "ATTRLESS_GRACE_S", 0.0)  # as if the attr-less trial were a minute old
    storage = f"sqlite:///{tmp_path / 's.db'}"
    open_study("t/s", storage, 0).ask()  # left RUNNING without host/pid: a killed process
    assert fail_stale_running(open_study("t/s", storage, 0)) == 1
    budget = Budget(trials=3, timeout_s=60, seeds=1)
    study, _ = run_search(open_study("t/s", storage, 0), lambda t: t.suggest_float("x", 0, 1), budget)
    counts = trial_counts(study, budget.trials)
    assert (counts.complete, counts.failed, counts.retried, counts.spent) == (3, 0, 1, 3)


def test_pruned_trials_use_the_budget(tmp_path):
    storage = f"sqlite:///{tmp_path / 's.db'}"

    def objective(trial: optuna.Trial) -> float:
        if trial.number >= 2:
            raise optuna.TrialPruned()
        return 0.5

    budget = Budget(trials=5, timeout_s=60, seeds=1)
    study, _ = run_search(open_study("t/p", storage, 0), objective, budget)
    counts = trial_counts(study, 5)
    assert (counts.complete, counts.pruned, counts.spent) == (2, 3, 5) and len(study.trials) == 5


def test_replicates_have_distinct_seeds_and_names():
    b = Budget(trials=3, timeout_s=1, seeds=2, search_seed=7, replicates=3)
    seeds = [b.for_replicate(r).search_seed for r in range(3)]
    assert seeds == [7, 1007, 2007] and b.for_replicate(2).for_replicate(0).search_seed == 7
    assert b.for_replicate(1).eval_seeds == b.eval_seeds  # the same K evaluation seeds
    assert [replicate_study_name("d/s", r) for r in range(3)] == ["d/s", "d/s/r1", "d/s/r2"]
    with pytest.raises(ValueError):
        b.for_replicate(3)


def test_records_of_replicates_do_not_overwrite_each_other():
    common = dict(dataset="d", task="t", strategy="s", family="early", modalities=["a"], seed=1000, status="ok")
    a, b = Record(**common, replicate=0), Record(**common, replicate=1)
    assert len(merge_records([a], [b])) == 2
    old = Record.from_json({k: v for k, v in a.to_json().items() if k != "replicate"})
    assert old.replicate == 0  # records written before replicates load as replicate 0


def test_run_with_replicates_and_cap(synthetic_bundle, monkeypatch, tmp_path):
    data, cfg = synthetic_bundle
    monkeypatch.setenv("FUSEBENCH_CONFIG_DIR", str(cfg))
    out = tmp_path / "run"
    args = ["run", "--suite", "toy", "--strategies", "concat,majority", "--replicates", "2", "--seeds", "2",
            "--data-dir", str(data), "--out", str(out)]
    assert main(args) == 0
    records = load_records(out / "results.jsonl")
    concat = [r for r in records if r.strategy == "concat"]
    assert sorted((r.replicate, r.seed) for r in concat) == [(0, 1000), (0, 1001), (1, 1000), (1, 1001)]
    assert all(r.n_trials == r.n_trials_budget == 2 and r.n_trials_complete + r.n_trials_pruned == 2 for r in concat)
    assert all(not r.cap_bound and r.best_step is not None and r.best_step > 0 for r in concat)
    assert {r.sampler["seed"] for r in concat} == {0, 1000}
    assert [r.replicate for r in records if r.strategy == "majority"] == [0, 0]  # no search to replicate
    preds = pd.read_parquet(out / "predictions" / "toy" / "concat.parquet")
    assert sorted(preds.groupby(["replicate", "seed"]).size().index) == [(0, 1000), (0, 1001), (1, 1000), (1, 1001)]
    meta = json.loads((out / "run.json").read_text())
    assert meta["protocol"]["replicates"] == 2 and meta["protocol"]["replicate_search_seeds"] == [0, 1000]
    studies = optuna.get_all_study_names(optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(out / "optuna.journal"))))
    assert {"toy/concat", "toy/concat/r1"} <= set(studies)


class FakeClock:
    """Seconds that pass only when a test says so; stands in for `time` in bench/search/clock.py and
    for `datetime` in optuna's optimize loop (its `timeout=`), so a timeout test needs no sleeping."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now

    def process_time(self) -> float:  # a fake second is a second of training: wall and CPU alike
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def datetime_module(self) -> SimpleNamespace:
        """A stand-in for the `datetime` module whose `datetime.now()` follows this clock."""
        clock = self

        class _DateTime(real_datetime.datetime):
            @classmethod
            def now(cls, tz=None):
                return real_datetime.datetime(2026, 1, 1, tzinfo=tz) + real_datetime.timedelta(seconds=clock.now)

        return SimpleNamespace(datetime=_DateTime, timedelta=real_datetime.timedelta)


def test_the_cap_binding_is_visible(tmp_path, monkeypatch):
    """A 0.5 s cap and 0.4 s trials: the second trial starts before the cap, no third one. On a fake
    clock: with wall-clock sleeps a loaded machine could spend the whole 0.5 s before the first trial
    (no trial at all) or stretch the run past any bound."""
    import optuna.study._optimize as optuna_optimize

    import fusebench.search.clock as clock_module

    clock = FakeClock()
    monkeypatch.setattr(clock_module, "time", clock)
    monkeypatch.setattr(optuna_optimize, "datetime", clock.datetime_module())
    storage = f"sqlite:///{tmp_path / 's.db'}"

    def slow(trial: optuna.Trial) -> float:
        clock.sleep(0.4)
        return trial.suggest_float("x", 0, 1)

    budget = Budget(trials=20, timeout_s=0.5, seeds=1)
    study, seconds = run_search(open_study("t/c", storage, 0), slow, budget)
    counts = trial_counts(study, budget.trials)
    assert counts.spent == 2 and seconds == pytest.approx(0.8)  # the cell marks this cap_bound=True
