"""Stale trials: those a killed process left RUNNING, failed so that the budget runs them again.

On PostgreSQL, optuna's heartbeat fails a trial whose process stopped beating for the grace period
and optuna's retry callback (bench/search/storage.py) re-enqueues its params (optuna beats only for
the trials its `optimize` runs: a batched round starts a heartbeat thread per asked trial,
bench/search/trial_batch.py). On a journal or SQLite file (one machine) a RUNNING trial is stale when
the process that started it (user attrs `host`, `pid`) is gone; a trial without those attrs is
stale once it is `ATTRLESS_GRACE_S` old (a process killed between `ask` and its first writes; a younger
one is a live process's, which writes them next: failing it made that write raise
`UpdateFinishedTrialError` out of the live process's search). Either way the seconds the killed
process spent on those trials leave the search cap (bench/search/clock.py: `drop_uncommitted`).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket

import optuna
from optuna.trial import TrialState

from fusebench.core.processes import pid_alive
from fusebench.search.clock import drop_uncommitted, trial_owners

log = logging.getLogger(__name__)

# a live process writes its trial's host and pid within milliseconds of `ask`; this leaves room for a
# stalled one and for the clocks of two machines sharing a journal on a network file system
ATTRLESS_GRACE_S = 60.0


def _is_stale(t: optuna.trial.FrozenTrial) -> bool:
    host, pid = t.user_attrs.get("host"), t.user_attrs.get("pid")
    if host is None or pid is None:
        started = t.datetime_start  # optuna's naive local time of the `ask`
        return started is None or (dt.datetime.now() - started).total_seconds() >= ATTRLESS_GRACE_S
    if pid == os.getpid() and host == socket.gethostname():
        return False
    return host == socket.gethostname() and not pid_alive(int(pid))


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
    for t in [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if _is_stale(t)]:
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
    storage (PostgreSQL, opened with heartbeat) those not past optuna's grace period and not `_is_stale`;
    on a file storage those not `_is_stale`. A trial another host owns and that has no heartbeat
    cannot be judged from here and counts as live. For
    `fusebench forget`, which must not delete a study under a worker's feet."""
    from fusebench.search.storage import has_heartbeat

    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if has_heartbeat(study._storage):
        # optuna lists only trials with an old heartbeat; a worker killed between `ask` and its first beat
        # left none, so the file-storage test (its pid gone on this host, or no owner and old) applies too
        stale = set(study._storage._get_stale_trial_ids(study._study_id))
        return [t.number for t in running if t._trial_id not in stale and not _is_stale(t)]
    return [t.number for t in running if not _is_stale(t)]
