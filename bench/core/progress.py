"""Progress of long steps (encoding, the sweep, a cell's trials) for a person at a terminal or a CI log.

Code that does the work reports *events* through the module functions (`start`, `advance`,
`finish`); the command line picks where they go once per process with `configure`:

* ``rich``  — live bars on stderr (items/s, done/total, ETA), for a terminal;
* ``plain`` — one log line when a step starts and ends, and at most every `interval_s` seconds in
  between, for logs that are not a terminal (CI), so a long encode is never silent;
* ``off``   — nothing (``-q``).

Worker processes (``--jobs N``) install a `QueueBackend`; the parent replays their events into its
own backend with `drain`, so their cells and trials show up in the parent's view.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger("fusebench.progress")


@dataclass(frozen=True)
class Event:
    """One progress event. kind: start | advance | skip | finish. A `skip` counts `n` items done before
    this process (a resumed sweep's finished cells, a study's trials, kept seeds): they count toward the
    total, not toward the measured rate, so a resumed step's ETA is not 40 cells in 3 seconds. An advance's
    `work` is how much of its `n` was done here (default all of it): a cell begun by an earlier process
    adds only its unfinished share to the sweep's rate."""

    kind: str
    key: str
    label: str = ""
    total: int | None = None
    n: int = 0
    status: str = ""
    unit: str = "items"
    work: float | None = None


class Backend(Protocol):
    def handle(self, ev: Event) -> None: ...

    def close(self) -> None: ...


class NullBackend:
    """Drops every event (quiet mode, and library use without a command line)."""

    def handle(self, ev: Event) -> None:
        return None

    def close(self) -> None:
        return None


@dataclass
class _State:
    label: str
    total: int | None
    unit: str
    started: float
    done: int = 0
    status: str = ""
    last: float = 0.0
    skipped: int = 0  # done before this process: in `done`, not in the rate
    worked: float = 0.0  # items' worth done in this process: the rate's numerator


def format_eta(seconds: float | None) -> str:
    """`1h02m`, `3m05s`, `42s`, or `?` when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def measured(worked: float, done: int, total: int | None, took: float) -> tuple[float, float | None]:
    """Items per second of the work done here (`worked` items' worth in `took` s) and the ETA of the
    `total - done` left at that rate (None until something was done here, or without a total)."""
    rate = max(worked, 0.0) / max(took, 1e-9)
    return rate, (max(total - done, 0) / rate if total and rate > 0 else None)


def rate_text(rate: float, unit: str) -> str:
    """`5.0 items/s`, or `30.0 s/cell` below one per second; empty before anything was done here."""
    if rate <= 0:
        return ""
    return f"{rate:.1f} {unit}/s" if rate >= 1 else f"{1 / rate:.1f} s/{unit.rstrip('s')}"


def describe(st: _State, now: float) -> str:
    """One plain line: label, done/total (percent; how many were done before), rate, ETA from the rate
    of the work done in this process, status."""
    took = max(now - st.started, 1e-9)
    rate, eta = measured(st.worked, st.done, st.total, took)
    parts = [st.label]
    before = f"; {st.skipped} done before" if st.skipped else ""
    if st.total:
        pct = 100.0 * st.done / st.total
        parts.append(f"{st.done}/{st.total} {st.unit} ({pct:.0f}%{before})")
        if rate > 0:
            parts.append(rate_text(rate, st.unit))
        parts.append(f"elapsed {format_eta(took)}, ETA {format_eta(eta)}")
    else:
        parts.append(f"{st.done} {st.unit}{before}, elapsed {format_eta(took)}")
    if st.status:
        parts.append(st.status)
    return " | ".join(parts)


class PlainBackend:
    """Log lines (logger `fusebench.progress`): at start, at finish, and every `interval_s` in between."""

    def __init__(self, interval_s: float = 30.0, clock: Any = time.monotonic, logger: logging.Logger | None = None) -> None:
        self.interval_s, self.clock, self.log = interval_s, clock, logger or log
        self.tasks: dict[str, _State] = {}

    def handle(self, ev: Event) -> None:
        now = self.clock()
        if ev.kind == "start":
            started = self.tasks[ev.key] = _State(ev.label or ev.key, ev.total, ev.unit, now, status=ev.status, last=now)
            self.log.info("started %s", describe(started, now))
            return
        st = self.tasks.get(ev.key)
        if st is None:
            return
        st.done += ev.n
        st.skipped += ev.n if ev.kind == "skip" else 0
        st.worked += 0 if ev.kind == "skip" else ev.n if ev.work is None else ev.work
        if ev.status:
            st.status = ev.status
        if ev.kind == "finish":
            self.tasks.pop(ev.key)
            self.log.info("finished %s", describe(st, now))
        elif now - st.last >= self.interval_s:
            st.last = now
            self.log.info("%s", describe(st, now))

    def close(self) -> None:
        self.tasks.clear()


def _rate_eta_column() -> Any:
    """A rich column that shows the rate and ETA of the work done in this process (`measured`), redrawn
    live; rich's own TimeRemainingColumn would count a resumed step's earlier items as done in a blink."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class RateEtaColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            worked = float(task.fields.get("worked", task.completed))
            rate, eta = measured(worked, int(task.completed), task.total, task.elapsed or 0.0)
            return Text(f"{rate_text(rate, task.fields.get('unit', 'items'))} ETA {format_eta(eta)}".strip())

    return RateEtaColumn()


class RichBackend:
    """Live bars on stderr with rich; log records go through the same console (see `console`)."""

    def __init__(self, console: Any = None) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            _rate_eta_column(), TextColumn("{task.fields[status]}"), console=self.console, transient=False,
        )
        self.live = False
        self.ids: dict[str, Any] = {}
        self.worked: dict[str, float] = {}

    def handle(self, ev: Event) -> None:
        if ev.kind == "start":
            if not self.live:  # the live display runs only while a step is under way
                self.progress.start()
                self.live = True
            self.worked[ev.key] = 0.0
            self.ids[ev.key] = self.progress.add_task(ev.label or ev.key, total=ev.total, unit=ev.unit, worked=0.0,
                                                      status=ev.status)
            return
        if ev.key not in self.ids:
            return
        self.worked[ev.key] += 0 if ev.kind == "skip" else ev.n if ev.work is None else ev.work
        fields: dict[str, Any] = {"worked": self.worked[ev.key]}
        if ev.status:
            fields["status"] = ev.status
        self.progress.update(self.ids[ev.key], advance=ev.n, **fields)
        if ev.kind == "finish":
            task_id = self.ids.pop(ev.key)
            self.worked.pop(ev.key)
            if ev.key.startswith(("encode:", "cell:")):  # keep the sweep bar; transient rows go away
                self.progress.remove_task(task_id)
            if not self.ids:  # nothing under way: stop, so the command's result prints below the bars
                self.close()

    def close(self) -> None:
        if self.live:
            self.progress.stop()
            for task_id in list(self.progress.task_ids):
                self.progress.remove_task(task_id)
            self.live = False


class QueueBackend:
    """Puts events on a multiprocessing queue; the parent `drain`s them (worker processes)."""

    def __init__(self, queue: Any) -> None:
        self.queue = queue

    def handle(self, ev: Event) -> None:
        with contextlib.suppress(Exception):  # progress must never fail a cell
            self.queue.put_nowait(ev)

    def close(self) -> None:
        return None


_backend: Backend = NullBackend()
_lock = threading.Lock()


def set_backend(backend: Backend) -> Backend:
    """Install `backend` for this process; returns the previous one."""
    global _backend
    with _lock:
        old, _backend = _backend, backend
    return old


def backend() -> Backend:
    return _backend


def emit(ev: Event) -> None:
    with _lock:
        b = _backend
    try:
        b.handle(ev)
    except Exception as exc:
        log.debug("progress event dropped: %s", exc)


def start(key: str, label: str, total: int | None, unit: str = "items", status: str = "") -> None:
    emit(Event("start", key, label, total, 0, status, unit))


def advance(key: str, n: int = 1, status: str = "", work: float | None = None) -> None:
    """`n` more items of `key` done; `work` of them in this process when less than all (see `Event`)."""
    emit(Event("advance", key, n=n, status=status, work=work))


def skip(key: str, n: int, status: str = "") -> None:
    """`n` items of `key` were done before this process: counted as done, not in the rate (see `Event`)."""
    emit(Event("skip", key, n=n, status=status))


def finish(key: str, n: int = 0, status: str = "") -> None:
    emit(Event("finish", key, n=n, status=status))


@contextlib.contextmanager
def task(key: str, label: str, total: int | None, unit: str = "items") -> Iterator[None]:
    """`start` … `finish` around a block (finished also when the block raises)."""
    start(key, label, total, unit)
    try:
        yield
    finally:
        finish(key)


def choose_mode(quiet: bool, requested: str | None = None, stream: Any = None) -> str:
    """off when quiet; else `requested` ($FUSEBENCH_PROGRESS) if given; else rich on a terminal, plain otherwise."""
    if quiet:
        return "off"
    if requested:
        if requested not in ("rich", "plain", "off"):
            from fusebench.core.errors import UsageError

            raise UsageError(f"FUSEBENCH_PROGRESS must be rich, plain or off, got {requested!r}")
        return requested
    stream = stream or sys.stderr
    return "rich" if getattr(stream, "isatty", lambda: False)() else "plain"


def make_backend(mode: str, interval_s: float = 30.0) -> Backend:
    if mode == "rich":
        return RichBackend()
    if mode == "plain":
        return PlainBackend(interval_s)
    return NullBackend()


def drain(queue: Any, stop: threading.Event) -> threading.Thread:
    """Start a thread that replays events from worker processes into this process until `stop`.

    Progress events go to this process's backend; log records (a worker's `QueueHandler`,
    bench/run/parallel.py) go to the handlers of this process's logger of the same name."""

    def loop() -> None:
        import queue as q

        while not stop.is_set() or not queue.empty():
            try:
                ev = queue.get(timeout=0.2)
            except (q.Empty, EOFError, OSError):
                continue
            except Exception as exc:  # one event that does not unpickle must not end the replay of the rest
                log.warning("a worker's progress or log event could not be read and was dropped: %r", exc)
                continue
            if isinstance(ev, Event):
                emit(ev)
            elif isinstance(ev, logging.LogRecord):
                logging.getLogger(ev.name).handle(ev)

    thread = threading.Thread(target=loop, name="fusebench-progress", daemon=True)
    thread.start()
    return thread

