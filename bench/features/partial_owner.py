"""Who a `<key>.partial/` encode checkpoint folder belongs to, and removing the abandoned ones.

A partial folder is abandoned when no encode will ever resume it: its entry was stored and the
process was killed before it removed the folder (removed at once), or its slot (split/view of a
dataset) is keyed differently now and nothing wrote to it for `ABANDONED_IDLE_S` (a week). A
different key alone proves nothing: the key holds the data fingerprint, so a run at another size
(smoke vs full) or from a checkout at another version keys the same slot differently, and its killed
encode will resume; the cache is shared by every run. Without a sweep abandoned folders stay forever
(gigabytes for IMDB's token features).

Ownership is decided by the kernel, not by guessing from times: every process that encodes into a
folder holds a *shared* `flock` on `<folder>/.lock` for as long as it encodes (several writers of
one key may share it), and a folder is removed only under an *exclusive* non-blocking `flock` on
the same file, which the kernel grants only when no live process holds the shared one (a killed
process's locks die with it, kill -9 included). A writer that took its lock on a file the sweep had
just unlinked sees the inode change and takes it again. Each folder records its slot and key in
`slot.json`, so a later encode of the same slot under another key knows it is that slot's.

Folders written before this existed (no `slot.json`, no lock taken by their writers) are removed
only when the feature index says the slot's previous key was theirs and they are as idle.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import time
from pathlib import Path

from fusebench.core.io import atomic_write_bytes

log = logging.getLogger(__name__)
SUFFIX = ".partial"
LOCK = ".lock"
OWNER = "slot.json"
ABANDONED_IDLE_S = 7 * 24 * 3600.0  # a killed run resumed within a week keeps its saved chunks


def claim(folder: Path, slot: str) -> int:
    """Create `folder`, hold a shared lock on its lock file and record `slot` in it; returns the
    lock's file descriptor (close it to let go). Raises OSError when the folder cannot be written."""
    while True:
        folder.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # a sweep removed the folder between mkdir and open
            continue
        fcntl.flock(fd, fcntl.LOCK_SH)  # waits only while a sweep holds the exclusive lock
        try:
            same = os.stat(folder / LOCK).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # locked a file the sweep had unlinked: the folder is gone, make it again
    try:
        owner = json.dumps({"slot": slot, "key": folder.name.removesuffix(SUFFIX)}).encode()
        atomic_write_bytes(folder / OWNER, owner)
    except OSError:
        os.close(fd)
        raise
    return fd


def remove_if_unused(folder: Path, fd: int | None = None) -> bool:
    """Remove `folder` unless a live process holds its lock (`fd`: this process's own shared lock,
    upgraded; it is closed either way). True when the folder is gone."""
    own = fd is not None
    try:
        if fd is None:
            fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return not folder.exists()
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log.debug("%s is in use by another process (%s lock held): left in place", folder,
                  "its" if own else "a writer's")
        os.close(fd)
        return False
    try:
        shutil.rmtree(folder, ignore_errors=True)
    finally:
        os.close(fd)
    return not folder.exists()


def _owner(folder: Path) -> dict[str, str] | None:
    try:
        data = json.loads((folder / OWNER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _idle_s(folder: Path) -> float:
    """Seconds since anything in `folder` (or the folder itself) was last written."""
    try:
        newest = max([folder.stat().st_mtime, *(p.stat().st_mtime for p in folder.iterdir())])
    except OSError:
        return 0.0
    return time.time() - newest


def sweep(dataset_dir: Path, slot: str, key: str, previous: str | None, stored: bool) -> list[Path]:
    """Remove the abandoned partial folders of `slot` (split/view) in `dataset_dir`, where `key` is the
    slot's key now, `previous` its key before (when the feature index saw it change) and `stored`
    whether `key`'s entry is in the cache. Never removes `key`'s own folder while its entry is
    missing (an encode of it resumes from there), nor a folder a live process holds. Returns the
    folders removed."""
    removed = []
    for folder in sorted(dataset_dir.glob(f"*{SUFFIX}")):
        name = folder.name.removesuffix(SUFFIX)
        owner = _owner(folder)
        if name == key:
            why = "its entry is stored" if stored else ""
        elif (owner is not None and owner.get("slot") == slot) or (owner is None and name == previous):
            idle = _idle_s(folder)
            why = f"{slot} is keyed {key} now and this folder was idle {idle / 86400:.0f} days" if (
                idle >= ABANDONED_IDLE_S) else ""
        else:
            why = ""
        if not why:
            continue
        try:
            size = sum(p.stat().st_size for p in folder.glob("*") if p.is_file())
        except OSError:  # a file removed meanwhile (another sweep): the size is only for the log
            size = 0
        if remove_if_unused(folder):
            log.info("removed the abandoned encode checkpoint %s (%.1f MB; %s)", folder, size / 2**20, why)
            removed.append(folder)
    return removed
