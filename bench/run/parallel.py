"""Run the cells of one dataset sequentially or in a pool of worker processes.

Workers are spawned (not forked: forking a process that already ran OpenMP/torch threads can
hang) with one torch thread each, and load the dataset's prepared tensors from a file the parent
wrote once, so no worker re-encodes or re-builds anything. Results come back as records; only the
parent writes `results.jsonl`. Timings measured while neighbours run are noisier: use `--jobs 1`
(or `fusebench throughput`) for publication-grade throughput.
"""

from __future__ import annotations

import concurrent.futures as cf
import copy
import logging
import logging.handlers
import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import torch

from fusebench.core import deadline, progress
from fusebench.core.diskfull import naming
from fusebench.features.extract import TaskData
from fusebench.results.records import Record
from fusebench.results.retrieval_stats import BASE
from fusebench.run import scratch
from fusebench.run.cell import Cell, CellContext, run_cell
from fusebench.run.console import NOISY, optuna_through_root
from fusebench.run.retrieval_cell import RetrievalCell, RetrievalIndex, RetrievalOutcome, RetrievalRun
from fusebench.search.storage import one_open_per_journal

_LOADED: dict[str, Any] = {}  # this worker's prepared tensors: TaskData, or (TaskData, RetrievalIndex)
_RETRIEVAL: dict[str, RetrievalRun] = {}  # a retrieval task's run in this worker: its dual encoders serve every cell
log = logging.getLogger(__name__)


def _watch_parent(parent: int, interval_s: float = 1.0) -> None:
    """Exit this worker as soon as its parent is gone (kill -9 of `fusebench run` leaves no orphans
    training on): a daemon thread polls the parent pid, which changes to a reaper's when it dies."""

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(1)
            time.sleep(interval_s)

    threading.Thread(target=watch, name="fusebench-parent-watch", daemon=True).start()


def _init_worker(threads: int, events: object = None, parent: int | None = None, log_level: int = logging.INFO) -> None:
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # a background job's ignored SIGINT stays ignored
        signal.signal(signal.SIGINT, _on_sigint)
    if parent is not None:
        _watch_parent(parent)
    torch.set_num_threads(threads)
    if events is not None:  # progress of this worker's cells and trials goes to the parent's view
        progress.set_backend(progress.QueueBackend(events))
        _forward_logs(events, log_level)
    # plugins (entry points, $FUSEBENCH_PLUGINS, which `--plugin` extends and this process inherited) register
    # here too, before any cell holding a plugin strategy is unpickled
    import fusebench.strategies  # noqa: F401
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.getLogger("optuna").setLevel(logging.WARNING)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _forward_logs(events: object, level: int) -> None:
    """This worker's log records go to the parent (progress.drain hands them to its handlers).

    Without it a worker's records reached neither the run's `--log-file` nor its terminal handler:
    a `--jobs 2` run logged its cells' cap warnings, kept seeds and fallbacks nowhere (WARNING and
    above went to the worker's bare stderr)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(_Forward(cast(Any, events)))
    root.setLevel(level)  # the parent's: its handlers filter further, as for its own records
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    optuna_through_root()  # optuna's own handler wrote to this worker's stderr, past the parent


class _Forward(logging.handlers.QueueHandler):
    """A QueueHandler whose records keep their traceback apart from their message (`exc_text`), so
    that the parent's handlers treat it as their own records' (the terminal leaves it out,
    bench/run/console.py); the stock one glued it into the message."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        out = copy.copy(record)  # the record itself may reach other handlers of this process
        out.msg = out.message = record.getMessage()
        out.args = None
        if record.exc_info and not record.exc_text:
            out.exc_text = logging.Formatter().formatException(record.exc_info)
        out.exc_info = None  # a traceback object does not pickle; its text does
        return out


_interrupted = False  # this worker's cell was interrupted (Ctrl-C, a time box): it takes no new ones
_in_cell = False  # this worker is running a cell (`_cell_running`)


def _on_sigint(signum: int, frame: object) -> None:
    """A worker's SIGINT: KeyboardInterrupt inside a cell, as Python's own handler; between cells it only
    marks the worker interrupted. Python's handler raised it in the executor's loop of an idle worker
    (at the end of a dataset, while the long cells still train), which killed it: the executor then
    took the pool for broken and SIGTERMed the workers still unwinding their cells (their trials'
    `interrupted` marks cut), whose futures became BrokenProcessPool, not KeyboardInterrupt."""
    global _interrupted
    _interrupted = True
    if _in_cell:
        raise KeyboardInterrupt


@contextmanager
def _cell_running() -> Iterator[None]:
    global _in_cell
    _in_cell = True
    try:
        yield
    finally:
        _in_cell = False


def _job(prepared: str, cell: Cell | RetrievalCell, ctx: CellContext) -> list[Record]:
    """One cell in this worker. After an interrupted cell (or a SIGINT between cells) the worker refuses
    the cells still queued to it: the executor hands a worker its next cell as soon as one ends, and an
    interrupted run on an H100 with 8 workers started 5 cells (and trained one, whose records were
    dropped) after its time box had struck."""
    global _interrupted
    deadline.check(f"cell {cell.dataset}/{cell.strategy}")  # past --stop-after: every queued cell says so
    if _interrupted:
        raise KeyboardInterrupt(f"{cell.dataset}/{cell.strategy} not started: this worker was interrupted")
    try:
        with _cell_running():
            return _run_job(prepared, cell, ctx)
    except deadline.StopRequested:
        raise  # nothing was in flight: not an interrupted worker (its refusal would stop the run at once)
    except KeyboardInterrupt:
        _interrupted = True
        raise


def _run_job(prepared: str, cell: Cell | RetrievalCell, ctx: CellContext) -> list[Record]:
    if prepared not in _LOADED:
        _LOADED.clear()
        _RETRIEVAL.clear()
        _LOADED[prepared] = torch.load(prepared, weights_only=False)
    with one_open_per_journal():  # the cell's replicates and seeds: one replay of the journal, not one each
        if isinstance(cell, RetrievalCell):
            if prepared not in _RETRIEVAL:
                data, index = _LOADED[prepared]
                _RETRIEVAL[prepared] = RetrievalRun(data, index, ctx)
            return _RETRIEVAL[prepared].run_cell(cell)
        return run_cell(cell, _LOADED[prepared], ctx)



class _WriteErrors:
    """A file for torch.save that keeps the OSError of a failed write: torch turns it into a bare
    RuntimeError ("iostream error", no errno), and a full disk must reach the CLI as ENOSPC."""

    def __init__(self, fh: Any) -> None:
        self.fh, self.error = fh, cast("OSError | None", None)

    def write(self, b: bytes) -> int:
        try:
            return self.fh.write(b)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.fh.flush()


def _save(data: TaskData | tuple[TaskData, RetrievalIndex], path: Path) -> None:
    sink: _WriteErrors | None = None
    try:
        with open(path, "wb") as fh:  # closing flushes: a full disk may show only there
            sink = _WriteErrors(fh)
            torch.save(data, sink)
    except (OSError, RuntimeError) as exc:
        err = exc if isinstance(exc, OSError) else (sink.error if sink is not None else None)
        if err is None:
            raise
        raise naming(err, path) from exc

GRACE_S = 2.0  # for the workers' own unwinding after Ctrl-C; less than interrupt.RETRY_S


def _interrupt_workers(pool: cf.ProcessPoolExecutor, running: list[cf.Future]) -> None:
    """Stop the cells still running after Ctrl-C, so that the pool's shutdown does not wait for them.

    A terminal's Ctrl-C and `timeout -s INT` signal the whole process group: the workers' cells are
    already unwinding (their trials marked `interrupted`, search seconds saved), and a second SIGINT
    would cut that short (seen: the `interrupted` mark itself interrupted), so they get `GRACE_S` to
    finish. `kill -INT` of the parent and an in-process KeyboardInterrupt reach the parent only: the
    cells still running then get a SIGINT of their own (before, the parent waited for them to end)."""
    for fut in running:
        fut.cancel()  # those not started yet: no worker takes them once its cell has unwound
    if not cf.wait([f for f in running if not f.cancelled()], timeout=GRACE_S).not_done:
        return
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        if proc.pid is not None and proc.is_alive():
            try:
                os.kill(proc.pid, signal.SIGINT)
            except ProcessLookupError:
                pass


def pool_jobs(jobs: int, device: torch.device) -> int:
    """Cell processes for a run on `device`: `jobs` on a CPU or a CUDA GPU, 1 elsewhere (MPS).

    On a GPU the small fusion heads of one cell leave most of the card idle, so cells share it as
    on a CPU they share the cores; each worker holds its own CUDA context."""
    return jobs if device.type in ("cpu", "cuda") else 1


class CellPool:
    """Runs cells in `jobs` spawned worker processes (kept for the whole run), or inline when jobs <= 1."""

    def __init__(self, jobs: int, threads: int) -> None:
        self.jobs, self.threads = jobs, threads
        self._pool: cf.ProcessPoolExecutor | None = None
        self._events: object = None
        self._stop = threading.Event()
        self._drain: threading.Thread | None = None
        self._scratch: Path | None = None
        self._scratch_lock: int | None = None  # bench/run/scratch.py: held while the folder exists
        self._futures: list[cf.Future] = []

    def __enter__(self) -> CellPool:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        """Close the pool; on Ctrl-C, first interrupt the workers' cells instead of waiting for them.

        Nested `finally`s: the KeyboardInterrupt that bench/run/interrupt.py repeats every few
        seconds may land in any step, and the scratch folder (the prepared tensors, gigabytes on the
        standard suite) must go whatever happens before."""
        try:
            if self._pool is not None:
                if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
                    _interrupt_workers(self._pool, [f for f in self._futures if not f.done()])
                self._pool.shutdown(wait=True, cancel_futures=True)
        finally:
            try:
                if self._drain is not None:
                    self._stop.set()
                    self._drain.join(timeout=5)
            finally:
                scratch.release(self._scratch, self._scratch_lock)
                self._scratch_lock = None

    def execute_retrieval(self, run: RetrievalRun, cells: list[RetrievalCell]) -> Iterator[RetrievalOutcome]:
        """Yield (cell, records or the exception it raised) of a retrieval task as cells finish: the dual
        encoder in this process first, then the re-rankers in the pool (here with one job). Before, every
        cell ran in this process, so a `--jobs 2` run trained one re-ranker at a time and left the other
        core idle for the whole task."""
        yield from run.execute([c for c in cells if c.strategy == BASE])
        rest = [c for c in cells if c.strategy != BASE]
        if self.jobs <= 1 or len(rest) <= 1:
            yield from run.execute(rest)
        else:
            yield from cast("Iterator[RetrievalOutcome]", self.execute(rest, run.data, run.ctx, run.index))

    def execute(self, cells: Sequence[Cell | RetrievalCell], data: TaskData, ctx: CellContext,
                index: RetrievalIndex | None = None) -> Iterator[tuple[Cell | RetrievalCell, list[Record] | BaseException]]:
        """Yield (cell, records or the exception it raised) as cells finish. A retrieval task's re-rank cells
        come with the task's `index` (`execute_retrieval`; the dual encoder cell never comes here)."""
        if index is not None and self.jobs <= 1:
            raise ValueError("a retrieval task's cells run here through CellPool.execute_retrieval, not execute")
        if self.jobs <= 1 or (len(cells) <= 1 and index is None):
            for cell in cells:
                assert isinstance(cell, Cell)
                try:
                    yield cell, run_cell(cell, data, ctx)
                except Exception as exc:
                    yield cell, exc
            return
        if self._pool is None:
            spawn = mp.get_context("spawn")
            self._events = spawn.Queue()
            self._drain = progress.drain(self._events, self._stop)
            self._pool = cf.ProcessPoolExecutor(
                self.jobs, mp_context=spawn, initializer=_init_worker,
                initargs=(self.threads, self._events, os.getpid(), logging.getLogger().getEffectiveLevel()),
            )
        # The prepared tensors are a full pickle: kept in a private temporary folder, never in the run
        # directory (a killed run must not leave a file there that loading would execute).
        if self._scratch is None:
            scratch.sweep()
            self._scratch, self._scratch_lock = scratch.create()
        prepared = self._scratch / f"{data.config.name}.pt"
        _save(data if index is None else (data, index), prepared)
        try:
            # longest first (token strategies), so that no worker idles at the end of a dataset
            ordered = sorted(cells, key=lambda c: c.info is None or c.info.input_kind != "tokens")
            futures = {self._pool.submit(_job, str(prepared), cell, ctx): cell for cell in ordered}
            self._futures = list(futures)
            for fut in cf.as_completed(futures):
                err = fut.exception()
                yield futures[fut], (err if err is not None else fut.result())
        finally:
            Path(prepared).unlink(missing_ok=True)
