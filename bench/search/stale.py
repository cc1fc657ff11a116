"""Stale trials: those a killed process left RUNNING, failed so that the budget runs them again.

On PostgreSQL, optuna's heartbeat fails a trial whose process stopped beating for the grace period
and optuna's retry callback (bench/search/storage.py) re-enqueues its params (optuna beats only for
the trials its `optimize` runs: a batched round starts a heartbeat thread per asked trial,
bench/search/trial_batch.py). On a journal or SQLite file (one machine) a RUNNING trial is stale when
the process that started it (user attrs `host`, `pid`) is gone; a trial without those attrs is
stale once it is `ATTRLESS_GRACE_S` old (a process killed between `ask` and its first writes; a younger
one is a live process's, which writes them next: failing it made that write raise
`UpdateFinishedTrialError` out of the live process's search). A RUNNING trial of *another host* (a run
directory copied here after its process was killed, or a journal shared over a network file system)
cannot be checked by pid: it is stale once nothing of it has moved for `FOREIGN_GRACE_S` of this
process's watching — its owner's search clock, which a working process saves every `SAVE_EVERY_S`, and
its reported epochs. Before, such a trial counted as running for ever: a killed run resumed on another
machine waited for it, silently, at the end of every search it held. Either way the seconds the killed
process spent on those trials leave the search cap (bench/search/clock.py: `drop_uncommitted`).

A live process can be taken for a killed one (stopped past the grace: SIGSTOP, a paused VM). When it wakes,
the trial it was running is FAIL (`not_running`): its search drops that trial and goes on
(bench/search/study.py, bench/search/trial_batch.py). On PostgreSQL the heartbeat alone says whether
another host's trial is live; the clock watch is for file storages.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from fusebench.core.processes import pid_alive
from fusebench.search.clock import COMMITTED_PREFIX, KEY_PREFIX, SAVE_EVERY_S, TRIAL_CLOCK_ATTR, drop_uncommitted, trial_owners

log = logging.getLogger(__name__)

# a live process writes its trial's host and pid within milliseconds of `ask`; this leaves room for a
# stalled one and for the clocks of two machines sharing a journal on a network file system
ATTRLESS_GRACE_S = 60.0


# a working process saves its search clock every SAVE_EVERY_S: four saves missed, and it is gone
FOREIGN_GRACE_S = 4 * SAVE_EVERY_S
# a watch that no look has touched for this long is dropped, whichever study it is of (a study this process
# no longer looks at kept its watches until the process exited); a later look starts its grace again
WATCH_IDLE_S = 3600.0


@dataclass
class _Watch:
    """What this process has seen of another host's RUNNING trial: its activity, since when, and how often
    it changed (a trial that moved while watched has a live owner: `wait_for_foreign`)."""

    seen: str
    since: float
    moves: int = 0
    looked: float = 0.0  # when a look last touched it (`WATCH_IDLE_S`)


# (storage, study id, trial id, owner) -> what was seen. The storage and the owner are in the key: two
# journals hold studies of the same name and trials of the same numbers (a watch of one judged the other's
# trial at first sight), and a trial's owner is its clock key, which no other process shares
_watched: dict[tuple[str, int, int, str], _Watch] = {}


def is_foreign(t: optuna.trial.FrozenTrial) -> bool:
    """Whether another host started the trial (its process cannot be checked from here)."""
    host = t.user_attrs.get("host")
    return host is not None and t.user_attrs.get("pid") is not None and host != socket.gethostname()


def _activity(t: optuna.trial.FrozenTrial, attrs: dict[str, Any]) -> str:
    """What a live owner of a trial keeps changing: its search clock's saved and committed seconds (by the
    trial's clock key, or every clock of its host and pid) and the trial's reported epochs."""
    key = t.user_attrs.get(TRIAL_CLOCK_ATTR)
    clock: list[Any]
    if key:
        clock = [attrs.get(KEY_PREFIX + str(key)), attrs.get(COMMITTED_PREFIX + str(key))]
    else:
        mine = f"{t.user_attrs.get('host')}:{t.user_attrs.get('pid')}:"
        clock = sorted((k, v) for k, v in attrs.items() if k.startswith((KEY_PREFIX + mine, COMMITTED_PREFIX + mine)))
    return repr((clock, sorted(t.intermediate_values.items())))


def _storage_name(storage: optuna.storages.BaseStorage) -> str:
    """Which storage a study lives in, the same for every open of it: a journal's file, a database's URL."""
    backend = getattr(storage, "_backend", None)
    path = getattr(backend, "_file_path", None)
    if path is not None:
        return os.path.realpath(str(path))
    url = getattr(storage, "url", None)
    return str(url) if url is not None else f"{type(storage).__name__}@{id(storage)}"


def _watch_key(study: optuna.Study, t: optuna.trial.FrozenTrial) -> tuple[str, int, int, str]:
    owner = t.user_attrs.get(TRIAL_CLOCK_ATTR) or f"{t.user_attrs.get('host')}:{t.user_attrs.get('pid')}"
    return _storage_name(study._storage), study._study_id, t._trial_id, str(owner)


def _watch(study: optuna.Study, t: optuna.trial.FrozenTrial) -> _Watch:
    """This process's watch of another host's trial, updated with what the trial shows now."""
    seen, now, key = _activity(t, study.user_attrs), time.monotonic(), _watch_key(study, t)
    watch = _watched.get(key)
    if watch is None:
        log.warning("study %s: trial %d is RUNNING for host %s (pid %s), which this machine cannot check; it is "
                    "taken as left by a killed process (a run copied here) once its owner's search clock and "
                    "reports have not moved for %.0f s", study.study_name, t.number, t.user_attrs.get("host"),
                    t.user_attrs.get("pid"), FOREIGN_GRACE_S)
        watch = _watched[key] = _Watch(seen, now)
    elif watch.seen != seen:
        watch.seen, watch.since, watch.moves = seen, now, watch.moves + 1
    watch.looked = now
    return watch


def _forget_finished(study: optuna.Study, running: list[optuna.trial.FrozenTrial]) -> None:
    """Drop the watches of this study's trials that are no longer RUNNING, and those of any study that no look
    has touched for `WATCH_IDLE_S` (so that `_watched` stays small in a long-lived process)."""
    keep = {_watch_key(study, t) for t in running if is_foreign(t)}
    where, now = (_storage_name(study._storage), study._study_id), time.monotonic()
    for key in [k for k, w in _watched.items() if (k[:2] == where and k not in keep) or now - w.looked > WATCH_IDLE_S]:
        del _watched[key]


def _foreign_silent(study: optuna.Study, t: optuna.trial.FrozenTrial) -> bool:
    """True once the trial of another host has shown no activity for `FOREIGN_GRACE_S` of watching here."""
    return time.monotonic() - _watch(study, t).since >= FOREIGN_GRACE_S


def _is_stale(t: optuna.trial.FrozenTrial, study: optuna.Study, *, watch_foreign: bool = True) -> bool:
    """Whether a RUNNING trial was left by a killed process (see the module doc). `watch_foreign=False`: another
    host's trial is not judged by its owner's clock (on PostgreSQL its heartbeat decides) and counts as live."""
    host, pid = t.user_attrs.get("host"), t.user_attrs.get("pid")
    if host is None or pid is None:
        started = t.datetime_start  # optuna's naive local time of the `ask`
        return started is None or (dt.datetime.now() - started).total_seconds() >= ATTRLESS_GRACE_S
    if pid == os.getpid() and host == socket.gethostname():
        return False
    if host != socket.gethostname():
        return watch_foreign and _foreign_silent(study, t)
    return not pid_alive(int(pid))


def not_running(study: optuna.Study, trial_id: int) -> bool:
    """Whether the trial has left RUNNING: told already, or ended by another process that took this one
    for a killed one (a stall past `FOREIGN_GRACE_S` or the heartbeat's grace: a SIGSTOP, a paused VM,
    a swapping machine) and failed it as stale, to be retried. Asked of this process's own trial before
    its tell, a True is such a take-over: its result is then thrown away and the search goes on (before,
    the next `trial.report` raised `UpdateFinishedTrialError` and optuna's tell `ValueError: Cannot tell a
    FAIL trial` out of the owner's whole search)."""
    return study._storage.get_trial(trial_id).state != TrialState.RUNNING


def tell_refused(exc: BaseException) -> bool:
    """Whether `exc` is optuna refusing to write to a finished trial: `UpdateFinishedTrialError`, a tell's
    "Cannot tell a FAIL trial.", or the `assert False` that optuna 5's `_run_trial` raises over that
    ValueError in its `finally` when the objective had returned a value."""
    if isinstance(exc, optuna.exceptions.UpdateFinishedTrialError):
        return True
    if isinstance(exc, ValueError):
        return str(exc).startswith("Cannot tell a ")
    return isinstance(exc, AssertionError) and exc.__context__ is not None and tell_refused(exc.__context__)


def refused_as_taken_over(study: optuna.Study, trial_id: int, exc: BaseException) -> bool:
    """Whether `exc`, raised at a write to this process's trial (a user attr, the tell), is optuna refusing
    it because another process failed the trial meanwhile (between this process's look, `not_running`,
    and the write). Any other error (a sampler's `after_trial`, an `ask`, a storage fault) is not, and the
    caller raises it."""
    return tell_refused(exc) and not_running(study, trial_id)


def warn_taken_over(study: optuna.Study, numbers: list[int]) -> None:
    log.warning("study %s: trial(s) %s of this process were failed as stale by another process, which took this one "
                "for killed (it stalled past the grace period); their results are dropped, they are retried, and "
                "the search goes on", study.study_name, ", ".join(map(str, numbers)))


def fail_stale_running(study: optuna.Study) -> int:
    """Mark trials left RUNNING by a killed process as FAIL so that the budget re-runs them.

    Heartbeat storage (PostgreSQL): optuna's own check (no heartbeat for the grace period), which
    also re-enqueues the failed params. File storage: trials whose process is gone (see module doc).
    """
    from fusebench.search.storage import has_heartbeat

    if has_heartbeat(study._storage):
        # the storage's stale-trial callback (bench/search/storage.py: DropStaleSeconds) retries each trial
        # failed here and drops its killed process's uncommitted seconds, as it does for the trials optuna's
        # `optimize` fails itself; not dropped here: the trials newly FAIL may include ones that live
        # processes told meanwhile, whose seconds are theirs
        before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
        optuna.storages.fail_stale_trials(study)
        n = len({t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))} - before)
        if n:
            log.warning("study %s: %d trial(s) left running by a killed process marked failed", study.study_name, n)
        return n
    failed: list[optuna.trial.FrozenTrial] = []
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    _forget_finished(study, running)
    for t in [t for t in running if _is_stale(t, study)]:
        try:
            study._storage.set_trial_user_attr(t._trial_id, "stale", True)
            study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
            failed.append(t)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another process failed it first
    if failed:
        log.warning("study %s: %d trial(s) left running by a killed process marked failed", study.study_name, len(failed))
        # the seconds those trials cost their killed process do not count against the cap (bench/search/clock.py)
        drop_uncommitted(study, trial_owners(failed))
    return len(failed)


def live_running(study: optuna.Study) -> list[int]:
    """Numbers of the study's RUNNING trials that a live process may still be running: on a heartbeat
    storage (PostgreSQL, opened with heartbeat) those not past optuna's grace period and not `_is_stale`
    by pid or age (the heartbeat alone decides for another host's trial); on a file storage those not
    `_is_stale` (another host's trial: live until it has been watched idle for `FOREIGN_GRACE_S`;
    `wait_for_foreign` watches). For `fusebench forget`, which must not delete a study under a worker's feet."""
    from fusebench.search.storage import has_heartbeat

    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if has_heartbeat(study._storage):
        # optuna lists only trials with an old heartbeat; a worker killed between `ask` and its first beat
        # left none, so the pid and age tests apply too (its pid gone on this host, or no owner and old)
        stale = set(study._storage._get_stale_trial_ids(study._study_id))
        return [t.number for t in running if t._trial_id not in stale and not _is_stale(t, study, watch_foreign=False)]
    _forget_finished(study, running)
    return [t.number for t in running if not _is_stale(t, study)]



def wait_for_foreign(studies: list[optuna.Study], poll_s: float = 5.0) -> None:
    """Watch the RUNNING trials that other hosts own in `studies` until each has moved (a live owner) or
    stayed idle for `FOREIGN_GRACE_S` (a killed one), so that `live_running` can judge them; returns at once
    when there are none, and on a heartbeat storage, where the heartbeat decides (`live_running`). For
    `fusebench forget` on a run copied from another machine."""
    from fusebench.search.storage import has_heartbeat

    studies = [s for s in studies if not has_heartbeat(s._storage)]
    end = time.monotonic() + FOREIGN_GRACE_S + poll_s
    while True:
        pending = False
        for study in studies:
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                if not is_foreign(t) or _is_stale(t, study):
                    continue  # this host's, or idle for the grace: decided
                pending = pending or _watched[_watch_key(study, t)].moves == 0  # not seen moving yet
        if not pending or time.monotonic() >= end:
            return
        time.sleep(poll_s)
