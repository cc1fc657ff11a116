"""A trial stopped by Ctrl-C is retried on resume, not counted as spent (bench/search/study.py).

optuna's `optimize` catches a KeyboardInterrupt raised in the objective, tells the trial FAIL and
re-raises. Before the fix that FAIL counted as an objective failure: a search interrupted once and
resumed recorded `n_trials_failed: 1` and trained one trial fewer than its budget. A batched round
interrupted in the same process (tests, notebooks) left its trials RUNNING with this live pid, so a
second search in that process waited for them forever.
"""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from fusebench.search.storage import open_storage
from fusebench.search.study import Budget, open_study, run_search, trial_counts
from fusebench.search.trial_batch import BatchObjective, run_batched_search

BUDGET = Budget(trials=3, timeout_s=1000, seeds=1)


def _interrupting(at: int):
    def objective(trial: optuna.Trial) -> float:
        if trial.number == at:
            raise KeyboardInterrupt
        return float(trial.number)

    return objective


def _batch(objective) -> BatchObjective:
    return BatchObjective(lambda t: None, lambda trials, _, may_start: [objective(t) for t in trials])


@pytest.mark.parametrize("path", ["sequential", "batched"])
def test_an_interrupted_trial_is_retried_not_spent(tmp_path, path):
    url = f"journal:///{tmp_path / 'j.journal'}"

    def search(objective):
        study = open_study("s", open_storage(url), 0)
        if path == "sequential":
            return run_search(study, objective, BUDGET, poll_s=0.01)[0]
        return run_batched_search(study, _batch(objective), BUDGET, 2, poll_s=0.01)[0]

    with pytest.raises(KeyboardInterrupt):
        search(_interrupting(at=1))
    study = search(_interrupting(at=-1))  # resumed in the same process: nothing is left RUNNING
    counts = trial_counts(study, 3)
    assert (counts.complete, counts.failed, counts.spent) == (3, 0, 3), [(t.number, t.state, t.user_attrs) for t in study.trials]
    assert counts.retried >= 1
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]
