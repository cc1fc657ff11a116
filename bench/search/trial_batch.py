"""Batched trials: B trials asked together with `study.ask()`, trained together, each told once.

`run_batched_search` is `run_search` (bench/search/study.py) for a `trial_batch` of B ≥ 2: the same
budget (COMPLETE + PRUNED + objective FAIL trials, across processes and resumes), the same wall-clock
cap, the same handling of trials left RUNNING by a killed process (marked FAIL `stale`, not counted,
retried) and of trials stopped by Ctrl-C (FAIL `interrupted`, likewise), and the same race rule for
the last slot (`surplus`). What changes is the shape of a round:

1. up to B trials are asked one after another; right after each `ask` the objective's `propose`
   samples that trial's parameters, so that the trial-seeded TPE draws from the trial's own stream
   (the proposals of the random start-up trials are exactly those of a sequential search) and the
   constant liar sees every earlier trial of the batch as RUNNING, so model-based proposals differ;
2. the objective's `train` fits the batch (grouping members that can share one vmapped model) and
   returns one outcome per trial: a value, `optuna.TrialPruned`, or the exception that failed it;
3. every trial is told exactly once: COMPLETE with its value, PRUNED (optuna takes the last reported
   value), or FAIL with the reason in user attr `fail_reason`.

The search cap is checked where the unbatched search checks it: before each trial starts
training. `train` gets `may_start()` and calls it before it starts each group of trials (a vmapped
group trains together) and each trial trained alone; once it returns False, the trials not yet
started get the outcome `NotStarted` and are told FAIL with user attr `not_started` — neither spent
nor failed nor retried, so the record says `cap_bound`. A trial (or group) already training runs to
its end, as a trial does under optuna's `optimize(timeout=...)`. Without this, a round whose trials
cannot share a shape trained them one after another past the cap: on the standard run, avmnist
`coattention`'s first round of 5 trials ran ~3 h against a 30-minute cap.

A process killed during a round leaves up to B trials RUNNING; the next run marks them stale exactly
as it does a single trial, so resume and the trial counts work unchanged (tests/test_trial_batch.py
kills a real subprocess to show it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.storages._heartbeat import get_heartbeat_thread
from optuna.trial import TrialState

from fusebench.search.clock import TRIAL_CLOCK_ATTR, SearchClock
from fusebench.search.stale import not_running, refused_as_taken_over, warn_taken_over
from fusebench.search.study import Budget, _spent_flags, drive_search

log = logging.getLogger(__name__)

Outcome = float | BaseException  # what `train` returns per trial


class NotStarted(Exception):
    """The outcome of a trial of a round that the search cap stopped before it started training."""

    def __init__(self) -> None:
        super().__init__("the search cap (timeout_s) was spent before this trial of the round started")


@dataclass(frozen=True)
class BatchObjective:
    """A search objective split in two so that trials can be asked one by one and trained together.

    `propose(trial)` samples the trial's parameters (it is called right after the trial is asked);
    `train(trials, proposals, may_start)` trains them and returns one `Outcome` per trial, in order;
    before it starts training a trial (or a group trained together) it asks `may_start()`, and gives
    each trial it may no longer start the outcome `NotStarted()` (see the module doc)."""

    propose: Callable[[optuna.Trial], Any]
    train: Callable[[list[optuna.Trial], list[Any], Callable[[], bool]], list[Outcome]]


def _claim(study: optuna.Study, budget: Budget, host: str, pid: int, clock_key: str) -> optuna.Trial | None:
    """Ask one trial; give it up (FAIL, `surplus`) when `budget` live trials are numbered before it."""
    trial = study.ask()
    try:
        trial.set_user_attr("host", host)
        trial.set_user_attr("pid", pid)
        # whose seconds a kill in it leaves uncommitted; after the host and pid (`clock.trial_owners`): a trial
        # with the key and no pid yet is stale on a file storage, and its live process's seconds were set back
        trial.set_user_attr(TRIAL_CLOCK_ATTR, clock_key)
        trials = study.get_trials(deepcopy=False)
        ahead = sum(t.number < trial.number and (t.state == TrialState.RUNNING or s)
                    for t, s in zip(trials, _spent_flags(trials)))
        if ahead >= budget.trials:
            trial.set_user_attr("surplus", True)
            study.tell(trial, state=TrialState.FAIL)
            return None
    except (ValueError, optuna.exceptions.UpdateFinishedTrialError) as exc:
        if not refused_as_taken_over(study, trial._trial_id, exc):
            raise
        warn_taken_over(study, [trial.number])  # failed as stale (ownerless and old) before its attrs or its tell
        return None
    return trial


def _tell(study: optuna.Study, trial: optuna.Trial, outcome: Outcome) -> TrialState | None:
    """Tell the trial's outcome (exactly once) and return the state it ended in; None when another process
    ended it first (`stale.not_running`: this one stalled past the grace; the trial is retried)."""
    try:
        return None if not_running(study, trial._trial_id) else _tell_outcome(study, trial, outcome)
    except (ValueError, optuna.exceptions.UpdateFinishedTrialError) as exc:
        # failed by another process between the look and the tell; not a sampler's error after a tell
        if refused_as_taken_over(study, trial._trial_id, exc):
            return None
        raise


def _tell_outcome(study: optuna.Study, trial: optuna.Trial, outcome: Outcome) -> TrialState:
    if isinstance(outcome, optuna.TrialPruned):
        return study.tell(trial, state=TrialState.PRUNED).state
    if isinstance(outcome, NotStarted):
        trial.set_user_attr("not_started", True)
        trial.set_user_attr("fail_reason", str(outcome))
        return study.tell(trial, state=TrialState.FAIL).state
    if isinstance(outcome, BaseException):
        trial.set_user_attr("fail_reason", f"{type(outcome).__name__}: {str(outcome)[:300]}")
        log.warning("trial %d failed: %s: %s", trial.number, type(outcome).__name__, outcome)
        return study.tell(trial, state=TrialState.FAIL).state
    return study.tell(trial, float(outcome)).state  # a NaN value is told FAIL by optuna itself


def _taken_share(taken: list[bool], started: list[bool]) -> float:
    """The share of a round's seconds that its trials taken over by another process cost: of its started
    trials, those taken (all of them when none started, which cost only the round's overhead)."""
    ran = [t for t, s in zip(taken, started, strict=True) if s]
    return sum(ran) / len(ran) if ran else float(all(taken))


def _interrupted(study: optuna.Study, trials: list[optuna.Trial]) -> None:
    """Ctrl-C during a round: its trials end FAIL `interrupted`, retried and not counted, as those of a
    killed process are (left RUNNING, a trial of this still-living process would never turn stale:
    a search called again in the same process, as tests and notebooks do, waited for it forever)."""
    for trial in trials:
        if not_running(study, trial._trial_id):
            continue  # told already, or failed by another process meanwhile (retried already)
        with contextlib.suppress(ValueError, optuna.exceptions.UpdateFinishedTrialError):  # ... or just now
            trial.set_user_attr("interrupted", True)
            study.tell(trial, state=TrialState.FAIL)


def run_batched_search(study: optuna.Study, objective: BatchObjective, budget: Budget, trial_batch: int, *,
                       poll_s: float = 0.5) -> tuple[optuna.Study, float]:
    """Run rounds of up to `trial_batch` trials until the budget is spent (see the module doc);
    returns the study and the seconds spent here, as `run_search` does."""
    if trial_batch < 1:
        raise ValueError(f"trial_batch must be >= 1, got {trial_batch}")
    host, pid = socket.gethostname(), os.getpid()
    failures = [0]

    def round_(done: int, running: int, clock: SearchClock) -> None:
        """Ask up to `trial_batch` trials (each proposed right after its ask), train them, tell each once."""
        # optuna records heartbeats only for the trials its own `optimize` runs: an asked trial of a killed
        # worker then never turned stale on PostgreSQL, and every other process waited for it for ever
        with contextlib.ExitStack() as beats:
            trials: list[optuna.Trial] = []
            try:
                proposals: list[Any] = []
                for _ in range(min(trial_batch, budget.trials - done - running)):
                    trial = _claim(study, budget, host, pid, clock.key)
                    if trial is None:
                        break  # another process took the last slot
                    trials.append(trial)
                    beats.enter_context(get_heartbeat_thread(trial._trial_id, study._storage))  # no-op on a file
                    try:
                        proposals.append(objective.propose(trial))
                    except (RuntimeError, ValueError) as exc:  # invalid params: the trial fails, the others go on
                        trials.pop()
                        failures[0] += _tell(study, trial, exc) is not None
                if trials:
                    settle(trials, objective.train(trials, proposals, lambda: clock.left() > 0), clock)
            except KeyboardInterrupt:  # in a proposal, the training, the commit or the tells: the untold trials
                _interrupted(study, trials)
                raise

    def settle(trials: list[optuna.Trial], outcomes: list[Outcome], clock: SearchClock) -> None:
        """Commit the round's seconds and tell each trial its outcome."""
        if len(outcomes) != len(trials):
            raise RuntimeError(f"the batch objective returned {len(outcomes)} outcomes for {len(trials)} trials")
        # committed before the tells, not after them (busy()'s end): a kill or a Ctrl-C among the tells
        # then leaves the untold trials' seconds counted (retried: counted twice, the safe side), where
        # a commit after them dropped the told ones' (spent trials' seconds out of the cap). The trials
        # that another process took over (`stale.not_running`) are retried: their share of the seconds of
        # the round's started trials goes, the rest counts. Before, a round taken in part kept all its
        # seconds, and its next commit also cleared the lost seconds the other process had recorded. An
        # even share per trial: exact for a vmapped group, which trains its trials together; an estimate
        # for one trained a trial after another (the one-by-one fallback). A trial not started (the cap)
        # cost nothing: a cap-bound round of 5 with 1 trained, taken over, loses all its seconds, not 1/5
        taken_share = _taken_share([not_running(study, t._trial_id) for t in trials],
                                   [not isinstance(o, NotStarted) for o in outcomes])
        if taken_share:
            clock.discard(taken_share)
        clock.commit()
        cut = sum(isinstance(o, NotStarted) for o in outcomes)
        if cut:
            log.warning("study %s: the %.0fs cap was spent during a round: %d of its %d trials not started",
                        study.study_name, budget.timeout_s, cut, len(trials))
        taken = []
        for trial, outcome in zip(trials, outcomes):
            state = _tell(study, trial, outcome)
            taken += [trial.number] if state is None else []
            failures[0] += state == TrialState.FAIL and not isinstance(outcome, NotStarted)
        if taken:
            warn_taken_over(study, taken)

    return study, drive_search(study, budget, round_, lambda: failures[0], poll_s)


def trials_batched(study: optuna.Study) -> int:
    """How many of the study's finished trials trained inside a batch of two or more (user attr `batch_size`)."""
    return sum(t.user_attrs.get("batch_size", 1) > 1 for t in study.get_trials(deepcopy=False)
               if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
