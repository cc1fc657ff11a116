"""optuna's journal file, made to survive torn writes.

optuna appends one JSON line per storage operation to the journal. A crash or a full disk in the
middle of an append leaves a partial last line. optuna itself skips such a line while it is the
last one, but the next append lands right after it, and from then on that line is a JSON error
and every read of the file fails: every study in the run directory (finished ones too) becomes
unreadable.

`RepairingJournalFileBackend` prevents both halves:

- on open, `repair()` moves every line that is not a whole JSON operation (a torn tail, or the
  torn prefix glued in front of a later record by an older writer) aside into
  `<journal>.torn-<timestamp>` (kept, never erased) and rewrites the journal atomically without it;
- before each append, under optuna's own journal lock, a tail without its newline is cut off (and
  kept aside) so a record is never appended onto a partial one.

Any other unreadable journal becomes a `UsageError` that names the file.

A lock left by a dead process that points to the journal's old place (a run directory tarred on one
machine and resumed on another) is dropped on open: optuna cannot release it (`drop_dangling_lock`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from optuna.storages.journal import JournalFileBackend
from optuna.storages.journal._file import get_lock_file

from fusebench.core.diskfull import is_disk_full, naming
from fusebench.core.errors import UsageError
from fusebench.core.io import atomic_write_bytes

log = logging.getLogger(__name__)

# optuna's JournalOperation.SET_TRIAL_INTERMEDIATE_VALUE: the per-epoch reports the pruner reads, 95 % of
# a GPU run's journal (262,204 of 274,564 operations). Their appends are not fsynced: an fsync cost
# ~1.5 ms under the journal lock (1.74 against 0.23 ms per report here), paid every epoch by every
# trial of every process. Nothing is lost to a crash of the process (the page cache keeps the write);
# an OS crash or power loss can drop only reports after the journal's last fsynced operation, because
# an fsync writes all of the file's earlier data: those are reports of trials still running, which are
# then stale and retried; a told trial's reports are durable with its tell.
INTERMEDIATE_VALUE = 7


def _as_operation(line: bytes) -> bytes | None:
    """The JSON operation in `line` (without its newline), salvaging a record glued after a torn prefix.

    The whole line is tried first and later starts are found with `bytes.find`: the candidate list
    used to be built by slicing at every byte of every line, which made a check of the 40 MB journal
    of a GPU run take 11 s (under the lock, in every process that opened it)."""
    body = line.rstrip(b"\r\n")
    start = 0
    while start >= 0:
        try:
            value = json.loads(body[start:])
        except (ValueError, UnicodeDecodeError):
            value = None
        if isinstance(value, dict) and "op_code" in value:
            return body[start:]
        start = body.find(b'{"', start + 1)
    return None


def _has_torn(data: bytes) -> bool:
    """Whether `data` (a journal's bytes) holds a line that is not one whole JSON operation."""
    if data and not data.endswith(b"\n"):
        return True
    lines = data.splitlines()
    if len(lines) != data.count(b"\n"):  # a bare b"\r" ends a line: repair sets it aside, optuna reads on to b"\n"
        return True
    try:  # one parse in C for the whole file; a line per operation, each an object with an op_code
        values = json.loads(b"[" + b",".join(lines) + b"]")
    except (ValueError, UnicodeDecodeError):
        values = None
    if values is not None and len(values) == len(lines):
        return not all(isinstance(v, dict) and "op_code" in v for v in values)
    for line in lines:
        op = _as_operation(line)
        if op is None or len(op) != len(line.rstrip(b"\r")):
            return True
    return False


def _set_aside(path: Path, torn: list[bytes]) -> Path:
    aside = path.with_name(f"{path.name}.torn-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
    with open(aside, "ab") as fh:
        fh.write(b"\n".join(torn) + b"\n")
    return aside


def repair(path: Path) -> int:
    """Drop the torn lines of the journal at `path` (kept in a `.torn-*` file beside it); returns how many.

    Must be called with the journal's lock held (or before any writer exists).
    """
    if not path.is_file():
        return 0
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"optuna journal {path}: cannot be read: {exc}") from None
    if not data:
        return 0
    lines = data.splitlines(keepends=True)
    good: list[bytes] = []
    torn: list[bytes] = []
    for line in lines:
        op = _as_operation(line) if line.endswith(b"\n") else None
        if op is None:
            torn.append(line.rstrip(b"\r\n"))
            continue
        if len(op) != len(line.rstrip(b"\r\n")):
            torn.append(line.rstrip(b"\r\n")[: len(line.rstrip(b"\r\n")) - len(op)])
        good.append(op + b"\n")
    if not torn:
        return 0
    aside = _set_aside(path, torn)
    atomic_write_bytes(path, b"".join(good))
    log.warning("optuna journal %s: %d torn record(s) set aside in %s; the studies continue from the whole records",
                path, len(torn), aside.name)
    return len(torn)


def _cut_partial_tail(path: Path) -> None:
    """Cut a last line that lacks its newline (kept aside), so the next append starts on a fresh line."""
    size = path.stat().st_size
    if size == 0:
        return
    with open(path, "rb+") as fh:
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return
        fh.seek(0)
        data = fh.read()
        keep = data.rfind(b"\n") + 1
        _set_aside(path, [data[keep:]])
        fh.truncate(keep)
        fh.flush()
        os.fsync(fh.fileno())
    log.warning("optuna journal %s: a partial last record was cut off before appending", path)


def drop_dangling_lock(lock: Path) -> bool:
    """Remove optuna's symlink lock `lock` when its target does not exist; True when it did.

    A live lock points to its journal, which exists. A dangling one was left by a process that died
    holding the lock in a run directory that has since moved: optuna's stale-lock grace period stats
    the link, which fails, and its `acquire` then retries forever without sleeping.

    Several processes open a resumed run's journal at once (`--jobs N`). They drop in turns
    (`_one_dropper`), each reading the link again in its turn (`_dangling`, one read): only a dropper
    removes a dangling lock, so the link it renames is the dangling one it read. Before, a process
    that had seen the dangling lock renamed away the live lock another had taken once a third had
    dropped it, and `islink` then `exists` took a live lock released between the two for a dangling
    one; the give-back then restored it after its holder had released it. A stress test
    (tests/test_journal_dangling_lock.py) saw two holders at once, optuna's "did not possess lock"
    and locks held by nobody (optuna breaks those only after its 30 s grace period)."""
    if not _dangling(lock):
        return False
    with _one_dropper(lock.parent):
        if not _dangling(lock):  # another process dropped it first
            return False
        aside = lock.with_name(f"{lock.name}.dangling-{os.getpid()}-{time.monotonic_ns()}")
        try:
            os.rename(lock, aside)
        except FileNotFoundError:  # a dropper that does not take turns (a file system without flock)
            return False
    target = os.readlink(aside)
    os.unlink(aside)
    log.warning("optuna journal lock %s pointed to %s, which does not exist (the run directory moved after a "
                "process died holding it): removed", lock, target)
    return True


def _dangling(lock: Path) -> bool:
    """Whether `lock` is a link whose target does not exist, from one read of the link: `islink` then
    `exists` took a live lock released between the two calls for a dangling one."""
    try:
        target = os.readlink(lock)
    except OSError:  # no lock, or a regular file (not optuna's symlink lock)
        return False
    return not os.path.exists(os.path.join(lock.parent, target))  # a relative target is the link's folder's


@contextmanager
def _one_dropper(folder: Path) -> Iterator[None]:
    """An exclusive flock on the journal's folder, held while a dangling lock is checked and renamed;
    where folders cannot be flocked (no fcntl, some network file systems) the rename goes unserialised."""
    try:
        import fcntl
        fd = os.open(folder, os.O_RDONLY)
    except (ImportError, OSError):
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass
        yield
    finally:
        os.close(fd)  # releases the flock


class RepairingJournalFileBackend(JournalFileBackend):
    """`JournalFileBackend` that repairs torn records on open and never appends onto a partial line."""

    def __init__(self, file_path: str) -> None:
        super().__init__(file_path)
        self._path = Path(file_path)
        drop_dangling_lock(Path(getattr(self._lock, "_lock_file", f"{file_path}.lock")))
        if self._may_be_torn():
            with get_lock_file(self._lock):
                repair(self._path)

    def _may_be_torn(self) -> bool:
        """The check for torn records, without the lock: holding optuna's lock for the whole check
        stopped every other process's appends while each process that opened the journal parsed all
        of it (14 cell processes opening a 40 MB journal on a GPU machine waited ~50 s for each other,
        logging optuna's "taking longer than 10 seconds to acquire the lock file"). A record being
        appended meanwhile can look torn here; `repair` checks again under the lock."""
        try:
            data = self._path.read_bytes()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise UsageError(f"optuna journal {self._path}: cannot be read: {exc}") from None
        return _has_torn(data)

    def read_logs(self, log_number_from: int) -> Generator[dict[str, Any], None, None]:
        try:
            yield from super().read_logs(log_number_from)
        except ValueError as exc:  # JSONDecodeError too: a torn record written after we opened
            with get_lock_file(self._lock):
                dropped = repair(self._path)
            if not dropped:
                raise UsageError(f"optuna journal {self._path}: unreadable ({exc}); "
                                 "move it aside to start the searches afresh") from None
            self._log_number_offset = {0: 0}
            raise UsageError(f"optuna journal {self._path}: a torn record appeared while reading ({exc}); it was set "
                             "aside, re-run the same command to continue") from None

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        with get_lock_file(self._lock):
            _cut_partial_tail(self._path)
            what = "\n".join(json.dumps(entry, separators=(",", ":")) for entry in logs) + "\n"
            try:
                with open(self._path, "ab") as fh:
                    fh.write(what.encode("utf-8"))
                    fh.flush()
                    if any(entry.get("op_code") != INTERMEDIATE_VALUE for entry in logs):
                        os.fsync(fh.fileno())
            except OSError as exc:  # a full disk: the partial record is cut by the next append or open
                if is_disk_full(exc):
                    raise naming(exc, self._path) from exc
                raise
