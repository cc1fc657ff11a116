"""Ctrl-C (SIGINT) that a clean stop can rely on.

Python raises `KeyboardInterrupt` wherever the main thread happens to be when it handles the signal.
If that is a finalizer (a `__del__`, a weakref callback), Python prints "Exception ignored in ..."
and the program runs on: the interrupt is lost. It happened for real. `gpu_bundle.sh`'s time box
interrupted a suite while the garbage collector ran `regex`'s `Group.__del__` during start-up. The
suite then encoded and trained on until the box's SIGKILL 40 s later. CI saw the same exit 137, and
the README's test command failed there. The other cause of that exit, a shutdown that hangs after the
interrupt, is `cli.entry`'s.

`handling()` installs a handler that raises `KeyboardInterrupt` as Python's own does, and raises it
again every `RETRY_S` seconds (SIGALRM) until the command leaves the block. One that a finalizer
swallowed is therefore repeated; one that propagates reaches the command's `except KeyboardInterrupt`
well within `RETRY_S`, and leaving the block cancels the repeat. A SIGINT ignored when the command
starts (a background job of a non-interactive shell) stays ignored, and the handlers in place before
are put back on the way out (in-process callers such as the tests keep theirs).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

RETRY_S = 5.0


@contextmanager
def handling(retry_s: float = RETRY_S) -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt, repeated every `retry_s` seconds until the block is left."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        signal.setitimer(signal.ITIMER_REAL, retry_s)  # again, unless the command has stopped by then
        raise KeyboardInterrupt

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGALRM)
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGALRM, interrupt)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGINT, before[0])
        signal.signal(signal.SIGALRM, before[1])
