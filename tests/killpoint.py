"""Kill a subprocess at an exact point of its progress, without a race (docs/testing.md).

Polling a run's storage and then sending SIGKILL leaves a window: between the read that saw the
kill point and the signal, the child keeps running and may finish the trial the test then expects
to find stale. A loaded CI machine widens that window to tens of milliseconds (the test process is
simply not scheduled). `kill_at` closes it: it freezes the child with SIGSTOP, reads the state
again while nothing can change it, and only then kills; if the frozen state no longer matches, it
lets the child continue and keeps polling.

`settled` makes the kill point exact in one more way: a run that has just appended to its journal
still holds the journal's lock file for the fsync, so a kill right after the read that saw the
append often leaves the lock behind, and the re-run then waits optuna's 30 s grace period before
taking it over (a slower test, not a different one). Freezing only where `settled()` holds (no lock
file) makes every kill leave the same on-disk state.

`LoggedPopen` starts the child with its stdout and stderr in a file, never a pipe: a pipe holds
64 KiB, and a child that logs more than that blocks in write() until someone reads the pipe. These
tests only poll files while the child runs, so a chatty child (a debug log, a long traceback, a
warning per trial) would never reach its kill point and the test would hang until its timeout.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class LoggedPopen(subprocess.Popen):
    """A child process whose stdout and stderr (merged) go to `log`, which the test reads afterwards."""

    def __init__(self, args: Sequence[str], log: Path, **kwargs: Any) -> None:
        self.log = Path(log)
        with open(self.log, "wb") as fh:  # the child holds its own descriptor; ours closes here
            super().__init__(args, stdout=fh, stderr=subprocess.STDOUT, **kwargs)

    def output_tail(self, chars: int = 3000) -> str:
        """The last `chars` characters the child wrote (for failure messages)."""
        return self.log.read_text(encoding="utf-8", errors="replace")[-chars:]


def _tail(proc: subprocess.Popen) -> str:
    if isinstance(proc, LoggedPopen):
        return proc.output_tail()
    return proc.stderr.read()[-3000:] if proc.stderr else ""


def kill_at(proc: subprocess.Popen, seen: Callable[[], T | None], timeout_s: float, poll_s: float = 0.02,
            settled: Callable[[], bool] = lambda: True) -> T:
    """SIGKILL `proc` at the first moment `seen()` returns something (and `settled()` is true) while
    `proc` is frozen; return what `seen()` returned.

    `seen` reads the child's on-disk state (journal, results) and returns None until the kill point.
    Raises AssertionError when the child exits first or the point is not reached in `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the run finished (rc={proc.returncode}) before the kill point:\n{_tail(proc)}")
        if seen() is not None:
            os.kill(proc.pid, signal.SIGSTOP)
            frozen = seen() if settled() else None  # nothing changes now: the state the kill leaves
            if frozen is not None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
                assert proc.returncode == -signal.SIGKILL, proc.returncode
                return frozen
            os.kill(proc.pid, signal.SIGCONT)
        time.sleep(poll_s)
    raise AssertionError(f"kill point never reached in {timeout_s:.0f}s")
