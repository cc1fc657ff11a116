"""One optuna study per (task, strategy): seeded TPE, median pruning, resumable.

The study lives in the run's storage under the name `<dataset>/<strategy>`. Re-running continues
it: completed and pruned trials count toward the budget, and a trial left RUNNING by a killed
process is marked FAIL (and so retried) before the study goes on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

log = logging.getLogger(__name__)

DONE_STATES = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass(frozen=True)
class Budget:
    """The equal budget every strategy gets, and the seeds that keep search and evaluation apart."""

    trials: int
    timeout_s: float
    seeds: int
    search_seed: int = 0
    eval_seed_base: int = 1000  # evaluation seeds are eval_seed_base + k, disjoint from search seeds

    @property
    def eval_seeds(self) -> list[int]:
        return [self.eval_seed_base + k for k in range(self.seeds)]


def open_study(name: str, storage: str, search_seed: int) -> optuna.Study:
    return optuna.create_study(
        study_name=name,
        storage=storage,
        direction="maximize",
        load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=search_seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=2),
    )


def fail_stale_running(study: optuna.Study) -> int:
    """Mark trials left RUNNING by a killed process as FAIL so that the budget re-runs them."""
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in stale:
        study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)  # noqa: SLF001
    if stale:
        log.warning("study %s: %d trial(s) left running by a killed process marked failed", study.study_name, len(stale))
    return len(stale)


def run_search(
    study: optuna.Study, objective: Callable[[optuna.Trial], float], budget: Budget
) -> tuple[optuna.Study, float]:
    """Run the trials still missing from the budget; return the study and seconds spent now."""
    fail_stale_running(study)
    done = len(study.get_trials(deepcopy=False, states=DONE_STATES))
    remaining = max(budget.trials - done, 0)
    started = time.perf_counter()
    if remaining:
        study.optimize(objective, n_trials=remaining, timeout=budget.timeout_s, catch=(RuntimeError, ValueError))
    return study, time.perf_counter() - started


def best_params_or_none(study: optuna.Study) -> dict | None:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return study.best_trial.params if complete else None
