"""The parent's replay of worker events (progress.drain) outlives an event that cannot be unpickled:
before, the first such event ended the thread, and every later progress line and worker log
record of the run was lost without a word."""

from __future__ import annotations

import multiprocessing as mp
import threading
import time

from fusebench.core import progress


def _refuse() -> None:
    raise RuntimeError("this event cannot be rebuilt here")


class Unloadable:
    def __reduce__(self):
        return (_refuse, ())


class Collect:
    def __init__(self) -> None:
        self.events: list[progress.Event] = []

    def handle(self, ev: progress.Event) -> None:
        self.events.append(ev)

    def close(self) -> None:
        return None


def test_an_unreadable_event_is_dropped_and_the_next_ones_still_arrive():
    queue = mp.get_context("spawn").Queue()
    seen = Collect()
    old = progress.set_backend(seen)
    stop = threading.Event()
    try:
        thread = progress.drain(queue, stop)
        queue.put(Unloadable())
        queue.put(progress.Event("advance", "sweep", n=1))
        deadline = time.monotonic() + 10
        while not seen.events and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [e.key for e in seen.events] == ["sweep"]
        assert thread.is_alive()
    finally:
        stop.set()
        progress.set_backend(old)
    thread.join(timeout=5)
    queue.close()
