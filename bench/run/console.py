"""What a command prints while it works: log level (-q/-v), an optional log file, the progress display.

`setup` is called once per process by the command line. Messages go to stderr (stdout carries the
commands' results); with rich bars, log records are printed through rich's console so they scroll
above the live bars instead of tearing them. `--log-file` always gets DEBUG records and the plain
progress lines, with dates, whatever the terminal shows.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from fusebench.core import progress
from fusebench.core.errors import UsageError

NOISY = ("optuna", "datasets", "httpx", "urllib3", "filelock", "fsspec", "transformers", "matplotlib", "PIL")


@dataclass(frozen=True)
class ConsoleOptions:
    quiet: bool = False  # warnings, errors and the final result line only
    verbose: bool = False  # debug records
    log_file: Path | None = None
    progress: str | None = None  # rich | plain | off; default from $FUSEBENCH_PROGRESS, else by terminal
    interval_s: float = 30.0  # plain mode: seconds between progress lines of one step


def setup(opts: ConsoleOptions) -> progress.Backend:
    """Configure the root logger and install the progress backend; returns the backend (close it at exit)."""
    if opts.quiet and opts.verbose:
        raise UsageError("-q/--quiet and -v/--verbose contradict each other; pass one of them")
    mode = progress.choose_mode(opts.quiet, opts.progress or os.environ.get("FUSEBENCH_PROGRESS") or None)
    interval = float(os.environ.get("FUSEBENCH_PROGRESS_INTERVAL", opts.interval_s))
    backend = progress.make_backend(mode, interval)
    root = logging.getLogger()
    for h in list(root.handlers):  # ours from an earlier call in this process; others' (pytest) stay
        if getattr(h, "_fusebench", False):
            root.removeHandler(h)
            h.close()
    level = logging.WARNING if opts.quiet else logging.DEBUG if opts.verbose else logging.INFO
    if isinstance(backend, progress.RichBackend):
        from rich.logging import RichHandler

        term: logging.Handler = RichHandler(console=backend.console, show_path=False, rich_tracebacks=False,
                                            log_time_format="%H:%M:%S")
        term.setFormatter(TerminalFormatter("%(message)s", tracebacks=opts.verbose))
    else:
        term = logging.StreamHandler(sys.stderr)
        term.setFormatter(TerminalFormatter("%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S",
                                            tracebacks=opts.verbose))
    term.setLevel(level)
    term._fusebench = True  # type: ignore[attr-defined]
    root.addHandler(term)
    root_level = level
    if opts.log_file is not None:
        try:
            opts.log_file.parent.mkdir(parents=True, exist_ok=True)
            fh = logging.FileHandler(opts.log_file, encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"--log-file {opts.log_file}: cannot write it ({exc.strerror}); pick a writable path") from None
        fh.setLevel(logging.DEBUG)
        fh._fusebench = True  # type: ignore[attr-defined]
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        root.addHandler(fh)
        root_level = logging.DEBUG
        if mode == "rich":  # the file gets plain progress lines too
            progress.set_backend(_Tee(backend, fh, interval))
            root.setLevel(root_level)
            _quiet_noisy()
            return backend
    root.setLevel(root_level)
    _quiet_noisy()
    progress.set_backend(backend)
    return backend


class TerminalFormatter(logging.Formatter):
    """The terminal's one line per record: a record's traceback (optuna's for a failed trial, whose
    message already names the error) goes to --log-file, and to the terminal with -v only, as the
    runner's own tracebacks do (logged at DEBUG)."""

    def __init__(self, fmt: str, datefmt: str | None = None, *, tracebacks: bool = False) -> None:
        super().__init__(fmt, datefmt)
        self.tracebacks = tracebacks

    def format(self, record: logging.LogRecord) -> str:
        if self.tracebacks:
            return super().format(record)
        kept = record.exc_info, record.exc_text, record.stack_info  # the other handlers (the file) format them
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        try:
            return super().format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = kept


def _quiet_noisy() -> None:
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    optuna_through_root()


def optuna_through_root() -> None:
    """optuna's records go to the root logger's handlers (terminal, --log-file) like everyone's.

    optuna logs on its own logger with its own stderr handler and no propagation, so a trial that
    failed (its exception and traceback, a WARNING) never reached --log-file, and in a `--jobs N`
    worker it bypassed the forwarding to the parent and wrote through the live bars."""
    import optuna

    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()


class _Tee:
    """Rich bars on the terminal, plain progress lines only into the log file."""

    def __init__(self, live: progress.Backend, handler: logging.Handler, interval_s: float) -> None:
        file_only = logging.getLogger("fusebench.progress.file")
        file_only.propagate = False
        file_only.handlers = [handler]
        file_only.setLevel(logging.INFO)
        self.live, self.plain = live, progress.PlainBackend(interval_s, logger=file_only)

    def handle(self, ev: progress.Event) -> None:
        self.live.handle(ev)
        self.plain.handle(ev)

    def close(self) -> None:
        self.live.close()


def teardown(backend: progress.Backend | None) -> None:
    """Stop the display and restore the silent default (commands may run several times in one process)."""
    if backend is not None:
        backend.close()
    progress.set_backend(progress.NullBackend())
