"""One optuna study per (task, strategy): seeded TPE, median pruning, resumable, shareable.

The study lives in the run's storage under the name `<dataset>/<strategy>`. Re-running continues
it: completed and pruned trials count toward the budget, and a trial left RUNNING by a killed
process is marked FAIL (and so retried) before the study goes on.

Several processes (the owning `fusebench run` and any number of `fusebench worker`s) may work on
one study at once. The budget stays exact across them:

- the budget counts every trial the strategy spent: COMPLETE, PRUNED, and FAIL when the objective
  itself failed (an exception in training: it used its slot, and a strategy that fails often gets
  fewer completed trials, which the record shows). Not counted: a trial failed because its process
  was killed (user attr `stale`, retried) or stopped by Ctrl-C (`interrupted`, retried: optuna itself
  tells a KeyboardInterrupt'ed trial FAIL, which counted it as spent), one that lost the race for the last slot (`surplus`), or
  a trial of a batched round that the search cap stopped before it started (`not_started`);
- a process only starts a trial while `spent + running < budget`, and stops its loop once the
  budget is spent;
- the two processes that race for the last slot both get a trial number from the storage, which
  numbers trials atomically; the one whose number has `budget` or more live (finished or running)
  trials before it gives its trial up before sampling anything (state FAIL, user attr
  `surplus=True`), so exactly `budget` trials are spent;
- a process that finds the budget claimed waits for the running trials of the others, and claims
  again if one of them dies (a stale trial is retried by whoever is still there).

Search cap (`Budget.timeout_s` in `Budget.cap_clock` seconds, a safety net): on the seconds of the whole replicate, summed
over every process that searched it, the killed ones included (bench/search/clock.py), so a resumed
search does not get a fresh cap; but not the seconds of trials a kill or an interrupt threw away, which
are retried and count again in their retry. It is checked before each trial starts, never during one: a trial
that has started trains to its end (as optuna's `optimize(timeout=...)` does), and no trial starts
once the cap is spent — in a batched round (bench/search/trial_batch.py) the trials asked with the
round but not yet started then end FAIL with user attr `not_started`, counted neither as spent nor as
failed nor as retried, and the record says `cap_bound`.

Search replicates: a cell runs `Budget.replicates` independent studies (`study_name` + `/rN` for
N ≥ 1), each with its own sampler seed (`Budget.for_replicate`), so that the variance of the search
itself is measured (Bouthillier et al., MLSys 2021).

Stale trials (a killed process's RUNNING ones): bench/search/stale.py.

Sampler: TPE reseeded per trial from `(search_seed, trial.number)`, so a resumed study or a second
worker never replays the random start-up draws of trial 0 (a TPESampler seeded once per process
would propose the same parameters again in every process and after every resume).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from fusebench.core import deadline
from fusebench.search.clock import CAP_CLOCKS, TRIAL_CLOCK_ATTR, SearchClock
from fusebench.search.stale import fail_stale_running, not_running, refused_as_taken_over, warn_taken_over

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

DONE_STATES = (TrialState.COMPLETE, TrialState.PRUNED)
LIVE_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
N_STARTUP_TRIALS = 10  # TPE's random start-up trials (optuna's default)
PRUNER_STARTUP_TRIALS = 2
PRUNER_WARMUP_STEPS = 2
REPLICATE_SEED_STRIDE = 1000  # replicate r searches with sampler seed search_seed + 1000 * r


@dataclass(frozen=True)
class Budget:
    """The equal budget every strategy gets, and the seeds that keep search and evaluation apart."""

    trials: int
    timeout_s: float
    seeds: int
    search_seed: int = 0
    eval_seed_base: int = 1000  # evaluation seeds are eval_seed_base + k, disjoint from search seeds
    replicates: int = 1  # independent searches per cell (R), each with its own sampler seed
    replicate: int = 0  # which replicate this budget drives (set by for_replicate)
    # what the cap (timeout_s) counts: "wall" seconds, or the searching processes' "cpu" seconds per
    # torch thread (bench/search/clock.py: CAP_CLOCKS). A run on CPU counts CPU seconds, so that other work on the
    # machine cannot spend a strategy's budget: a trial slowed by a neighbour takes more wall seconds,
    # not more CPU seconds. Studies written before this field existed read as "wall".
    cap_clock: str = "wall"

    def __post_init__(self) -> None:
        if self.cap_clock not in CAP_CLOCKS:
            raise ValueError(f"cap_clock must be one of {sorted(CAP_CLOCKS)}, got {self.cap_clock!r}")

    @property
    def eval_seeds(self) -> list[int]:
        return [self.eval_seed_base + k for k in range(self.seeds)]

    def for_replicate(self, r: int) -> Budget:
        """The budget of search replicate `r`: same trials, cap and evaluation seeds, its own sampler seed."""
        if not 0 <= r < self.replicates:
            raise ValueError(f"replicate {r} outside 0..{self.replicates - 1}")
        base = self.search_seed - REPLICATE_SEED_STRIDE * self.replicate
        return replace(self, search_seed=base + REPLICATE_SEED_STRIDE * r, replicate=r)


def cap_clock_for(device: torch.device) -> str:
    """The clock a search on `device` counts its cap in: CPU seconds on a CPU, wall seconds elsewhere."""
    return "cpu" if device.type == "cpu" else "wall"


def trial_status(budget: Budget, trial: optuna.trial.BaseTrial) -> str:
    """The progress label of a search trial: its replicate and optuna number. A number, not a count:
    failed, surplus and resumed-over trials take numbers too, so "trial 21/20" would be a false count."""
    rep = f"replicate {budget.replicate + 1}/{budget.replicates}, " if budget.replicates > 1 else ""
    return f"{rep}trial #{trial.number + 1}"


def replicate_study_name(name: str, r: int) -> str:
    """Replicate 0 keeps the plain name (runs before replicates existed resume into it)."""
    return name if r == 0 else f"{name}/r{r}"


class TrialSeededTPESampler(optuna.samplers.TPESampler):
    """TPE whose random state is reset before every trial from `(seed, trial.number)`.

    Deterministic for a single process, and safe for many: trial N draws from its own stream
    whoever runs it, so no two trials (across workers, or before and after a resume) share draws.
    """

    def __init__(self, seed: int, **kwargs: Any) -> None:
        super().__init__(seed=seed, **kwargs)
        self._base_seed = seed

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        stream = (self._base_seed * 1_000_003 + trial.number * 7_919 + 17) % (2**32 - 1)
        self._rng.rng.seed(stream)  # private attrs of optuna 4/5's TPESampler / RandomSampler
        self._random_sampler._rng.rng.seed((stream + 1) % (2**32 - 1))
        super().before_trial(study, trial)


def sampler_settings(search_seed: int) -> dict[str, Any]:
    return {"name": "TPESampler", "seed": search_seed, "reseeded_per_trial": True,
            "n_startup_trials": N_STARTUP_TRIALS, "constant_liar": True, "multivariate": False}


def pruner_settings() -> dict[str, Any]:
    return {"name": "MedianPruner", "n_startup_trials": PRUNER_STARTUP_TRIALS, "n_warmup_steps": PRUNER_WARMUP_STEPS,
            "step": "epoch", "value": "validation main metric"}


def make_sampler(search_seed: int) -> optuna.samplers.BaseSampler:
    return TrialSeededTPESampler(seed=search_seed, n_startup_trials=N_STARTUP_TRIALS, constant_liar=True)


def make_pruner() -> optuna.pruners.BasePruner:
    return optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP_TRIALS, n_warmup_steps=PRUNER_WARMUP_STEPS)


def _storage(storage: str | optuna.storages.BaseStorage) -> optuna.storages.BaseStorage | str:
    if isinstance(storage, str) and storage.startswith("journal://"):
        from fusebench.search.storage import open_storage

        return open_storage(storage)
    return storage


def open_study(name: str, storage: str | optuna.storages.BaseStorage, search_seed: int, *, create: bool = True) -> optuna.Study:
    """Create or load the study `name`; with `create=False` it must already exist (KeyError otherwise)."""
    storage = _storage(storage)
    if not create:
        return optuna.load_study(study_name=name, storage=storage, sampler=make_sampler(search_seed), pruner=make_pruner())
    return optuna.create_study(
        study_name=name,
        storage=storage,
        direction="maximize",
        load_if_exists=True,
        sampler=make_sampler(search_seed),
        pruner=make_pruner(),
    )


class _Surplus(Exception):
    """Raised inside a trial that lost the race for the last budget slot (it has sampled nothing)."""


class _TakenOver(Exception):
    """Raised after a trial's objective when another process failed the trial meanwhile (`stale.not_running`)."""


def _retried(trials: list[optuna.trial.FrozenTrial]) -> set[int]:
    """Numbers of trials failed by a dead or interrupted process: marked `stale` or `interrupted` here, or re-enqueued by optuna's
    heartbeat retry callback (their copy carries system attr `failed_trial`)."""
    out = {t.number for t in trials if t.user_attrs.get("stale") or t.user_attrs.get("interrupted")}
    return out | {int(t.system_attrs["failed_trial"]) for t in trials if "failed_trial" in t.system_attrs}


def _spent_flags(trials: list[optuna.trial.FrozenTrial]) -> list[bool]:
    """Which trials use a slot of the budget (see the module docstring)."""
    retried = _retried(trials)
    return [t.state in DONE_STATES
            or (t.state == TrialState.FAIL and not _unspent_fail(t) and t.number not in retried)
            for t in trials]


def _unspent_fail(t: optuna.trial.FrozenTrial) -> bool:
    """A FAIL that never trained: it lost the race for the last slot, or the cap stopped its round first."""
    return bool(t.user_attrs.get("surplus") or t.user_attrs.get("not_started"))


def _counts(study: optuna.Study) -> tuple[int, int]:
    trials = study.get_trials(deepcopy=False)
    return sum(_spent_flags(trials)), sum(t.state == TrialState.RUNNING for t in trials)


def n_done(study: optuna.Study) -> int:
    """Trials that used the budget: COMPLETE + PRUNED + FAIL of the objective (not stale, not surplus)."""
    return _counts(study)[0]


@dataclass(frozen=True)
class TrialCounts:
    """How a study spent its budget (what records carry)."""

    budget: int
    complete: int
    pruned: int
    failed: int  # the objective failed (counted in the budget)
    retried: int  # failed because the process was killed (stale): not counted, run again

    @property
    def spent(self) -> int:
        return self.complete + self.pruned + self.failed

    def record_fields(self) -> dict[str, Any]:
        """The `n_trials*` and `cap_bound` fields of a record (classification and retrieval alike);
        `cap_bound`: the search cap (`Budget.cap_clock`) stopped the search before its budget was spent."""
        return {"n_trials": self.spent, "n_trials_budget": self.budget, "n_trials_complete": self.complete,
                "n_trials_pruned": self.pruned, "n_trials_failed": self.failed, "n_trials_retried": self.retried,
                "cap_bound": self.spent < self.budget}


def trial_counts(study: optuna.Study, budget: int) -> TrialCounts:
    trials = study.get_trials(deepcopy=False)
    spent = _spent_flags(trials)
    failed = sum(t.state == TrialState.FAIL and s for t, s in zip(trials, spent))
    stale = sum(t.state == TrialState.FAIL and not s and not _unspent_fail(t) for t, s in zip(trials, spent))
    return TrialCounts(budget, sum(t.state == TrialState.COMPLETE for t in trials),
                       sum(t.state == TrialState.PRUNED for t in trials), failed, stale)


def _guarded(objective: Callable[[optuna.Trial], float], budget: Budget) -> Callable[[optuna.Trial, str], float]:
    """The objective run by `run_search`: the trial names its process (host, pid, then its clock key:
    `clock.trial_owners`) and gives itself up when the budget is already claimed."""
    host, pid = socket.gethostname(), os.getpid()

    def claimed(trial: optuna.Trial, clock_key: str) -> float:
        trial.set_user_attr("host", host)
        trial.set_user_attr("pid", pid)
        # whose seconds a kill in it leaves uncommitted; after the host and pid: a trial with the key and no
        # pid yet is stale on a file storage (`stale._is_stale`), and its live process's seconds were set back
        trial.set_user_attr(TRIAL_CLOCK_ATTR, clock_key)
        trials = trial.study.get_trials(deepcopy=False)
        ahead = sum(t.number < trial.number and (t.state == TrialState.RUNNING or s)
                    for t, s in zip(trials, _spent_flags(trials)))
        if ahead >= budget.trials:
            trial.set_user_attr("surplus", True)
            trial.study.stop()
            raise _Surplus(f"trial {trial.number}: the budget of {budget.trials} is already claimed")
        return objective(trial)

    def run(trial: optuna.Trial, clock_key: str) -> float:
        try:
            return claimed(trial, clock_key)
        except KeyboardInterrupt:
            # optuna tells this trial FAIL before re-raising: without the mark a Ctrl-C'd and resumed
            # search counted it as spent and failed, one completed trial fewer for the strategy
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):  # another process failed it
                trial.set_user_attr("interrupted", True)
            raise

    return run


def drive_search(study: optuna.Study, budget: Budget, work: Callable[[int, int, SearchClock], None],
                 failures: Callable[[], int], poll_s: float = 0.5) -> float:
    """The search loop that `run_search` and `run_batched_search` share; returns the replicate's
    search seconds over every process so far (`clock.search_time`).

    Until the study has spent `budget.trials` (COMPLETE + PRUNED + objective FAIL, counting other
    processes and earlier runs): while slots are free and the replicate's cap is not spent (its
    seconds summed over processes, this one's included: `SearchClock`), `work(done, running, clock)`
    trains some of them and must start no trial once `clock.left()` is not positive; when the rest
    is claimed by other processes it waits (`poll_s`, not counted as search seconds) and marks the
    trials of dead processes stale, so that it takes over what they left; it stops when the cap is
    spent and nobody else is running a trial, or when `failures()` (trials that failed here) reaches
    the budget — a strategy that fails every trial."""
    clock = SearchClock(study, budget.timeout_s, clock=budget.cap_clock)
    fail_stale_running(study)
    with clock.ticking():
        while True:
            done, running = _counts(study)
            if done >= budget.trials:
                break
            if failures() >= budget.trials:
                log.warning("study %s: %d trial(s) failed here; stopping the search", study.study_name, failures())
                break
            if done + running < budget.trials and clock.left() > 0:
                deadline.check(f"more trials of {study.study_name}")  # --stop-after: none in flight here
                with clock.busy():  # commits this process's seconds when `work` returns
                    work(done, running, clock)
                continue
            if running == 0:
                break  # out of time and nobody else is working on it
            time.sleep(poll_s)  # the rest is claimed by other processes: wait, and take over what fails
            fail_stale_running(study)
    return clock.spent()


def run_search(
    study: optuna.Study, objective: Callable[[optuna.Trial], float], budget: Budget, *, poll_s: float = 0.5
) -> tuple[optuna.Study, float]:
    """Run trials until the study has spent `budget.trials` (counting those of other processes and of
    earlier runs), or the replicate's cap is spent and nobody else is running one. Returns the study
    and its search seconds over every process; `trial_counts(...).record_fields()` says whether the
    cap bound it. A trial that has started runs to its end; none starts once the cap is spent."""
    guarded = _guarded(objective, budget)
    failures: list[int] = []

    def count_failures(_: optuna.Study, t: optuna.trial.FrozenTrial) -> None:
        if t.state == TrialState.FAIL and not t.user_attrs.get("surplus"):
            failures.append(t.number)

    def optimize(done: int, running: int, clock: SearchClock) -> None:
        def stop(st: optuna.Study, _: optuna.trial.FrozenTrial) -> None:
            clock.commit()  # and at each trial's end (saved every SAVE_EVERY_S besides): this trial's seconds count
            # at the budget, or at the cap: optuna's own timeout sees this process's seconds only
            if _counts(st)[0] >= budget.trials or clock.left() <= 0 or deadline.passed():
                st.stop()  # past --stop-after: drive_search stops the run before the next trial

        def settle(trial: optuna.Trial) -> bool:
            # commit as the objective returns (or fails), before optuna tells the trial: a Ctrl-C or a kill
            # between the tell and the callback's commit dropped the told, spent trial's seconds; one
            # between this commit and the tell leaves the untold trial's seconds counted (the safe side).
            # A trial another process failed meanwhile (`stale.not_running`) is retried: its seconds go
            if not_running(study, trial._trial_id):
                clock.discard()
                return True
            clock.commit()
            return False

        def told_next(trial: optuna.Trial) -> float:
            mine.append(trial)
            try:
                try:
                    value = guarded(trial, clock.key)
                except KeyboardInterrupt:
                    raise
                except BaseException:
                    if settle(trial):
                        taken.add(trial.number)
                    raise
                if settle(trial):  # raised, not returned: optuna's tell of a returned value on a FAIL trial asserts
                    taken.add(trial.number)
                    raise _TakenOver(f"trial {trial.number} was failed by another process meanwhile")
                return value
            except KeyboardInterrupt:  # in the objective or in `settle`'s writes: retried, not spent
                interrupted.append(trial.number)
                with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):  # another process failed it
                    trial.set_user_attr("interrupted", True)
                raise

        mine: list[optuna.Trial] = []
        taken: set[int] = set()  # this process's trials found failed by another before it told them
        interrupted: list[int] = []
        try:
            study.optimize(told_next, n_trials=budget.trials - done - running, timeout=clock.left(),
                           catch=(RuntimeError, ValueError, _Surplus), callbacks=[stop, count_failures])
        except (ValueError, AssertionError) as exc:
            # optuna cannot tell a trial that another process has failed ("Cannot tell a FAIL trial"): this
            # process stalled past the grace and was taken for killed; the trial is retried, the search goes on.
            # Found before the tell (`taken`), or failed between that look and the tell (for a returned value
            # optuna's `finally` raises an AssertionError over the refusal); any other error (a sampler's, at an
            # ask) is not this and is raised
            if interrupted:  # a Ctrl-C in a trial failed meanwhile: optuna's tell raised this instead of it
                raise KeyboardInterrupt from None
            last = mine[-1] if mine else None
            if last is None or not (last.number in taken or refused_as_taken_over(study, last._trial_id, exc)):
                raise
            warn_taken_over(study, [mine[-1].number])

    return study, drive_search(study, budget, optimize, lambda: len(failures), poll_s)


def best_params_or_none(study: optuna.Study) -> dict | None:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return study.best_trial.params if complete else None
