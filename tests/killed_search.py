"""A search process that a test kills in the middle of a trial (the search cap's lost seconds:
tests/test_search_cap.py, tests/integration/test_postgres.py).

`search_script` is the child (`python -c`): `run_search` on the storage URL in argv[1], its trials
before `hang_at` taking 0.3 s and trial `hang_at` hanging until the kill; its seconds saved every 0.05 s.
`suspended_script` is a child that a test suspends (SIGSTOP) in a trial and continues later
(tests/test_taken_over.py). `trained_past_commit` is the kill point to pass to `tests.killpoint.kill_at`: the study's user attrs
once the child has trained `seconds` past its last commit (and, with `told`, after telling a trial).
"""

from __future__ import annotations

from typing import Any

import optuna

from fusebench.search.clock import COMMITTED_PREFIX, KEY_PREFIX
from fusebench.search.storage import open_storage


def search_script(study: str, trials: int, hang_at: int, heartbeat_s: int | None = None) -> str:
    """The child's source. `heartbeat_s`: the PostgreSQL heartbeat interval it records at (None: the default)."""
    beat = "" if heartbeat_s is None else f"storage_module.HEARTBEAT_INTERVAL_S = {heartbeat_s}\n"
    return f"""
import sys, time
import fusebench.search.clock as clock_module
import fusebench.search.storage as storage_module
from fusebench.search.study import Budget, open_study, run_search
clock_module.SAVE_EVERY_S = 0.05
{beat}
def objective(trial):
    if trial.number == {hang_at}:
        time.sleep(120)  # killed during this trial
    time.sleep(0.3)
    return trial.suggest_float("x", 0.0, 1.0)

run_search(open_study({study!r}, storage_module.open_storage(sys.argv[1]), 0), objective,
           Budget(trials={trials}, timeout_s=1000, seeds=1))
"""


def suspended_script(study: str, host: str | None = None, heartbeat_s: int | None = None) -> str:
    """A child running `run_search` of 3 trials on argv[1], each reporting 6 epochs 0.1 s apart, its seconds
    saved every 0.1 s; it prints `FINISHED <trial counts>` at the end. `host`: the host name it believes it
    runs on (another host, to the test process); `heartbeat_s`: its PostgreSQL heartbeat interval."""
    as_host = "" if host is None else f"import socket\nsocket.gethostname = lambda: {host!r}\n"
    beat = "" if heartbeat_s is None else f"storage_module.HEARTBEAT_INTERVAL_S = {heartbeat_s}\n"
    return f"""
import sys, time
{as_host}import fusebench.search.clock as clock_module
import fusebench.search.storage as storage_module
from fusebench.search.study import Budget, open_study, run_search, trial_counts
clock_module.SAVE_EVERY_S = 0.1
{beat}
def objective(trial):
    x = trial.suggest_float("x", 0.0, 1.0)
    for epoch in range(6):
        time.sleep(0.1)
        trial.report(x, epoch)
    return x

study, _ = run_search(open_study({study!r}, storage_module.open_storage(sys.argv[1]), 0), objective,
                      Budget(trials=3, timeout_s=1000, seeds=1))
print("FINISHED", trial_counts(study, 3), flush=True)
"""


def study_attrs(url: str, study: str) -> dict[str, Any] | None:
    """The study's user attrs, or None while the child has not created it."""
    try:
        return optuna.load_study(study_name=study, storage=open_storage(url)).user_attrs
    except KeyError:
        return None


def trained_past_commit(url: str, study: str, seconds: float, told: bool) -> dict[str, Any] | None:
    """The user attrs once one process's saved seconds are `seconds` past its committed ones (its trial in
    flight has trained that long and saved it) and, with `told`, it has committed a told trial; else None."""
    attrs = study_attrs(url, study)
    if attrs is None:
        return None
    committed = [float(v) for k, v in attrs.items() if k.startswith(COMMITTED_PREFIX)]
    own = [float(v) for k, v in attrs.items() if k.startswith(KEY_PREFIX)]
    if not committed or not own or (told and max(committed) <= 0):
        return None
    return attrs if max(own) >= max(committed) + seconds else None
