"""Small file helpers shared by every layer: atomic writes with ordinary (0644-under-umask) permissions."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from fusebench.core.diskfull import is_disk_full, naming


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one, never a part.

    `mkstemp` creates its file owner-only (0600); the result is chmod-ed to 0666 less the umask
    (0644 usually), as a plain `open(..., "w")` would, so run outputs stay readable by others.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        if is_disk_full(exc):  # no inode left: name the file being written, not the temporary one
            raise naming(exc, path) from exc
        raise
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)  # on a full disk: the old file stays whole, the partial copy's space comes back
        if isinstance(exc, OSError) and is_disk_full(exc):
            raise naming(exc, path) from exc
        raise


def check_writable_file(path: Path, flag: str) -> None:
    """Exit 2 (UsageError) unless `path` can be written as a file: checked before long work, not after."""
    from fusebench.core.errors import UsageError

    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{flag} {path}: is a directory; name a file")
    parent = path.parent
    if not parent.is_dir():
        raise UsageError(f"{flag} {path}: the folder {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UsageError(f"{flag} {path}: not writable; choose another path")
