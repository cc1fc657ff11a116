"""Optuna storage URLs → storage objects.

Accepted URLs:

- `journal:///abs/path/optuna.journal` — optuna's append-only journal file (`JournalFileBackend`):
  one machine, several processes; the default of `fusebench run` (`RUN_DIR/optuna.journal`).
- `sqlite:///path/optuna.db` — one machine (what older run directories used).
- `postgresql+psycopg://user:pass@host:port/db` (also `postgresql://`, `postgresql+psycopg2://`) —
  many machines. Opened with optuna's heartbeat, so a worker that is killed loses at most its
  running trial: after `grace_period` seconds without a heartbeat the trial is failed and
  `RetryHeartbeatStaleTrialCallback` (`RetryFailedTrialCallback` before optuna 4.9) re-enqueues its
  parameters for another worker.

A malformed or unsupported URL is a `UsageError` (exit 2) that names the accepted forms.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import optuna

from fusebench.core.errors import UsageError
from fusebench.search.clock import drop_uncommitted, trial_owners
from fusebench.search.journal import RepairingJournalFileBackend

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_S = 10
GRACE_PERIOD_S = 60
MAX_RETRY = 3
FORMS = "journal:///abs/path/optuna.journal, sqlite:///path/optuna.db, postgresql+psycopg://user:pass@host:port/db"
_PG_SCHEMES = ("postgresql", "postgresql+psycopg", "postgresql+psycopg2", "postgres")


# The journals opened inside `one_open_per_journal()`: file -> ((device, inode), storage), and the
# process that opened them (a forked child must not use its parent's file offsets).
_open_journals: dict[Path, tuple[tuple[int, int], optuna.storages.JournalStorage]] | None = None
_open_journals_pid: int | None = None


@contextmanager
def one_open_per_journal() -> Iterator[None]:
    """Within this block, `open_storage` opens each journal file once in this process and reuses it.

    Opening a journal replays every record in it: 1.7 s for the 10 MB a standard run had written
    after its first cells, and the file keeps growing. A run opens one study per cell and search
    replicate, so each resume of the standard run re-read its journal 321 times (~9 min) before
    its first trial. One `JournalStorage` syncs with the file on every read, so it still sees what
    other processes append. A journal rewritten since it was opened (a repair of a torn record
    writes a new file) is opened afresh. Scoped, not process-wide: outside a run, a tool or test
    that edits a journal gets a fresh open, with its repair.
    """
    global _open_journals, _open_journals_pid
    if _open_journals is not None and _open_journals_pid == os.getpid():
        yield  # nested: the outer block keeps them
        return
    _open_journals, _open_journals_pid = {}, os.getpid()
    try:
        yield
    finally:
        _open_journals, _open_journals_pid = None, None


def _journal_storage(path: Path) -> optuna.storages.JournalStorage:
    held_here, owner = _open_journals, _open_journals_pid  # one read: another thread's block may end meanwhile
    if held_here is None or owner != os.getpid():
        return optuna.storages.JournalStorage(RepairingJournalFileBackend(str(path)))
    key = path.resolve()
    held = held_here.get(key)
    if held is not None and held[0] == _file_identity(key):
        return held[1]
    storage = optuna.storages.JournalStorage(RepairingJournalFileBackend(str(path)))
    held_here[key] = (_file_identity(key), storage)  # after the open, which may create or rewrite it
    return storage


def _file_identity(path: Path) -> tuple[int, int]:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return (0, 0)
    return (stat.st_dev, stat.st_ino)


def default_url(run_dir: Path) -> str:
    """The storage of a run directory: its journal file, or the SQLite file an older run left there."""
    legacy = run_dir / "optuna.db"
    if legacy.is_file() and not (run_dir / "optuna.journal").exists():
        return f"sqlite:///{legacy.resolve()}"
    return f"journal:///{(run_dir / 'optuna.journal').resolve()}"


def redact(url: str) -> str:
    """The URL without its password, for run.json and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def kind(url: str) -> str:
    """'journal', 'sqlite' or 'postgresql' (validates the URL)."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme == "journal":
        return "journal"
    if scheme == "sqlite":
        return "sqlite"
    if scheme in _PG_SCHEMES:
        return "postgresql"
    raise UsageError(f"--storage {redact(url)!r}: unsupported storage URL; use one of: {FORMS}")


def _journal_path(url: str) -> Path:
    rest = url[len("journal://"):]
    if not rest.startswith("/") or rest == "/":
        raise UsageError(f"--storage {url!r}: a journal URL needs an absolute file path, e.g. journal:///tmp/run/optuna.journal")
    path = Path(rest)
    if path.is_dir():
        raise UsageError(f"--storage {url!r}: {path} is a directory; name the journal file inside it")
    return path


def open_storage(url: str, *, heartbeat: bool = True) -> optuna.storages.BaseStorage:
    """Parse `url` and open the optuna storage it names (see the module docstring)."""
    what = kind(url)
    if what == "journal":
        path = _journal_path(url)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return _journal_storage(path)
        except OSError as exc:
            raise UsageError(f"--storage {url!r}: cannot open the journal file {path}: {exc.strerror or exc}") from None
    if what == "sqlite":
        if url in ("sqlite://", "sqlite:///"):
            raise UsageError(f"--storage {url!r}: name the database file, e.g. sqlite:///runs/x/optuna.db")
        db = Path(url[len("sqlite:///"):]) if url.startswith("sqlite:///") else None
        if db is not None and db.is_dir():
            raise UsageError(f"--storage {url!r}: {db} is a directory; name the database file inside it")
        if db is not None and not db.parent.is_dir():
            raise UsageError(f"--storage {url!r}: the folder {db.parent} does not exist; create it or use another path")
        try:
            return optuna.storages.RDBStorage(url)
        except Exception as exc:
            raise UsageError(f"--storage {url!r}: cannot open the SQLite database: {type(exc).__name__}: {exc}") from None
    if what == "postgresql":
        parts = urlsplit(url)
        if not parts.hostname or not parts.path.strip("/"):
            raise UsageError(f"--storage {redact(url)!r}: a PostgreSQL URL needs a host and a database name, "
                             "e.g. postgresql+psycopg://user:pass@host:5432/fusebench")
        if parts.scheme in ("postgresql", "postgres"):  # SQLAlchemy's default driver is psycopg2; we ship psycopg 3
            url = "postgresql+psycopg://" + url.split("://", 1)[1]
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise UsageError("PostgreSQL storage needs psycopg: pip install 'fusebench[postgres]'") from None
        kwargs: dict = {"engine_kwargs": {"pool_pre_ping": True}}
        if heartbeat:
            kwargs.update(heartbeat_interval=HEARTBEAT_INTERVAL_S, grace_period=GRACE_PERIOD_S)
            if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback"):  # optuna >= 4.9
                kwargs["heartbeat_stale_trial_callback"] = DropStaleSeconds(
                    optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY))
            else:
                kwargs["failed_trial_callback"] = DropStaleSeconds(optuna.storages.RetryFailedTrialCallback(max_retry=MAX_RETRY))
        try:
            return optuna.storages.RDBStorage(url, **kwargs)
        except Exception as exc:
            raise UsageError(f"--storage {redact(url)!r}: cannot connect: {type(exc).__name__}: {exc}") from None
    raise AssertionError(what)


class DropStaleSeconds:
    """optuna's heartbeat-stale trial callback (the retry), then the search cap's part: the killed process's
    seconds since its last told trial are set back (`clock.drop_uncommitted`), as `stale.fail_stale_running`
    does on a file storage. A callback, because optuna's `optimize` fails stale trials itself before each
    trial it starts (in whichever process): a drop made only where fusebench calls `fail_stale_trials`
    missed those. Retry first: a kill between the two leaves the seconds counted (and the trial retried),
    never a trial that is not retried with its seconds dropped."""

    def __init__(self, then: Callable[[optuna.Study, optuna.trial.FrozenTrial], None]) -> None:
        self._then = then

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self._then(study, trial)
        owners = trial_owners([trial])
        if not owners:
            return
        try:
            drop_uncommitted(study, owners)
        except Exception as exc:  # the trial is failed and retried; its seconds stay counted (the safe side)
            log.warning("study %s: could not drop the seconds of stale trial %d: %s", study.study_name, trial.number, exc)


def has_heartbeat(storage: optuna.storages.BaseStorage) -> bool:
    from optuna.storages._heartbeat import is_heartbeat_enabled

    return is_heartbeat_enabled(storage)
