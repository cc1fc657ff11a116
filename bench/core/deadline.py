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
"""

from __future__ import annotations

import os
import re
import time
from contextlib import AbstractContextManager

from fusebench.core.envlist import scoped_env
from fusebench.core.errors import UsageError

ENV = "FUSEBENCH_STOP_AT"
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


def passed() -> bool:
    """Whether a deadline is set and has passed."""
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
    """Raise `StopRequested` when the deadline has passed; `before` names the work not started."""
    if passed():
        raise StopRequested(f"the --stop-after deadline passed before {before}")
