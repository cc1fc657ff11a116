"""`fusebench run --stop-after`: at a wall-clock deadline, start no new work and let the work in flight end.

A time box that interrupts the run (`timeout -s INT`, a batch scheduler's walltime signal) throws away
the trials in flight. On an H200 with 14 cell processes training 5 trials at once, 65 trials begun a
minute before a 235 s box ended were lost that way, about a quarter of the call's work
(reports/published/gpu-nvidia-h200/README.md, session 3). With a deadline, every process checks it
where nothing of its own is in flight (before a trial or a round of batched trials, before an
evaluation fit, before a cell) and raises `StopRequested` there. The run then ends like an interrupted
one, resumable by the same command, having lost nothing.

The deadline travels to the spawned cell processes in the environment (`FUSEBENCH_STOP_AT`, seconds
since the epoch), which `stopping_at` sets for the duration of a run.

`fusebench stop RUN_DIR` asks the same of a run already going, with no deadline set when it began:
it writes `RUN_DIR/stop-requested`, which every process of the run (`FUSEBENCH_STOP_FILE`, set by
`stop_file_watched` for the run) treats as a passed deadline. Before it, the only way to end a long run
at a session's end was a signal, which threw away a round of trials per running study (the standard
CPU run lost 10-40 min of two processes' work at each of ~20 stops).
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

from fusebench.core.envlist import scoped_env
from fusebench.core.errors import UsageError

ENV = "FUSEBENCH_STOP_AT"
STOP_FILE_ENV = "FUSEBENCH_STOP_FILE"
STOP_FILE = "stop-requested"  # in the run directory
EXIT_CODE = 75  # EX_TEMPFAIL (sysexits.h): not done, run it again
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


class StopRequested(KeyboardInterrupt):
    """The deadline passed; raised where this process has no work in flight. A KeyboardInterrupt, so
    every path that keeps an interrupted run resumable applies (with no trial to mark interrupted)."""


def parse_duration(text: str) -> float:
    """Seconds from '600', '90s', '45m', '3h50m' (what --stop-after accepts)."""
    parts = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", text)
    if not text.strip() or parts is None or not any(parts.groups()):
        raise UsageError(f"--stop-after {text!r}: not a duration; give seconds (600) or e.g. 45m, 3h50m, 90s")
    hours, minutes, seconds = (float(g) if g else 0.0 for g in parts.groups())
    return hours * _UNITS["h"] + minutes * _UNITS["m"] + seconds


def stopping_at(seconds_from_now: float | None) -> AbstractContextManager[None]:
    """Set the deadline (None: none) for this process and the processes it starts, until the block ends."""
    return scoped_env(ENV, None if seconds_from_now is None else repr(time.time() + seconds_from_now))


@contextlib.contextmanager
def stop_file_watched(run_dir: Path) -> Iterator[None]:
    """For a run of `run_dir` (holding its lock): a stop file of an earlier process, honoured or not,
    is removed first; the file is watched by this process and the processes it starts until the block
    ends, and removed then, so the next run of the same command resumes instead of stopping again."""
    path = Path(run_dir) / STOP_FILE
    path.unlink(missing_ok=True)
    with scoped_env(STOP_FILE_ENV, str(path.resolve())):
        try:
            yield
        finally:
            path.unlink(missing_ok=True)


def _stop_file_present() -> bool:
    path = os.environ.get(STOP_FILE_ENV)
    return path is not None and os.path.exists(path)


def passed() -> bool:
    """Whether a deadline is set and has passed, or a stop was requested with `fusebench stop`."""
    if _stop_file_present():
        return True
    raw = os.environ.get(ENV)
    if not raw:
        return False
    try:
        at = float(raw)
    except ValueError:
        raise UsageError(f"environment variable {ENV}={raw!r}: not a time in seconds since the epoch; "
                         "unset it (fusebench run --stop-after sets it)") from None
    return time.time() >= at


def check(before: str) -> None:
    """Raise `StopRequested` when the deadline has passed or a stop was requested; `before` names the
    work not started."""
    if passed():
        why = "a stop was requested (fusebench stop)" if _stop_file_present() else "the --stop-after deadline passed"
        raise StopRequested(f"{why} before {before}")
