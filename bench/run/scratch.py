"""A `--jobs N` pool's private scratch folder (the prepared tensors), and removing those of killed runs.

The folder lives under TMPDIR as `fusebench-prepared-<host>-<pid>-XXXXXXXX`. The pool removes it
however it stops, but a `kill -9` or a power cut leaves it, and on the standard suite it holds a
task's prepared tensors (up to gigabytes), so the next pool sweeps the leftovers of this host.

Whether a folder's run is alive is decided by the kernel, not by its name: the pool holds an
exclusive `flock` on `<folder>/owner.lock` for as long as the folder exists (a killed process's
locks die with it, kill -9 included), and a sweep removes a folder only under the same lock taken
without waiting. The pid in the name is not proof either way: a container with its own pid
namespace that shares TMPDIR and the hostname (`docker run --network host -v /tmp:/tmp`) names
pids that mean nothing here, so a live run there looked dead and lost its folder; and a killed
run's pid reused by another process kept its gigabytes for as long as that process lived.

The lock file is locked before it takes its name (`owner.lock.new`, renamed), so a folder with an
`owner.lock` is always locked while its pool lives. A folder without one is still being made or
was made by a version before the lock: it goes only when its pid is gone here and nothing has
written to it for `UNLOCKED_IDLE_S`.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path

from fusebench.core.processes import pid_alive

log = logging.getLogger(__name__)

PREFIX = "fusebench-prepared-"
LOCK = "owner.lock"
UNLOCKED_IDLE_S = 60.0  # a folder without its lock file yet: being made (microseconds), or an older version's


def host_tag() -> str:
    """This host's name as it appears in a folder name: letters, digits, `_` and `.` only (a `-`
    separates the name's fields; a `/` or a glob character would make another path or pattern)."""
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "_"


def owner_tag(pid: int) -> str:
    """The part of a folder's name that says which process made it: host and pid."""
    return f"{host_tag()}-{pid}-"


def create(root: Path | None = None) -> tuple[Path, int]:
    """Make this process's scratch folder under `root` (TMPDIR by default) and lock it; returns the
    folder and the lock's file descriptor, to close once the folder is removed (`release`)."""
    folder = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{owner_tag(os.getpid())}", dir=root))
    pending = folder / f"{LOCK}.new"
    fd = os.open(pending, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: nobody else can hold it
        os.rename(pending, folder / LOCK)
    except BaseException:
        os.close(fd)
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder, fd


def release(folder: Path | None, fd: int | None) -> None:
    """Remove the folder, then let go of its lock (a sweep may then remove what rmtree left)."""
    try:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        if fd is not None:
            os.close(fd)


def _remove_if_abandoned(folder: Path, pid: int) -> bool:
    """Remove `folder` unless a live process may own it; True when removed."""
    try:
        fd = os.open(folder / LOCK, os.O_RDWR)
    except FileNotFoundError:  # no lock file: being made, or made before the lock existed
        try:
            idle = time.time() - max([folder.stat().st_mtime, *(p.stat().st_mtime for p in folder.iterdir())])
        except OSError:
            return False
        if pid_alive(pid) or idle < UNLOCKED_IDLE_S:
            return False
        shutil.rmtree(folder, ignore_errors=True)
        return True
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # BlockingIOError: its pool holds it
        os.close(fd)
        return False
    try:
        shutil.rmtree(folder, ignore_errors=True)  # under the lock: its owner is gone for good
    finally:
        os.close(fd)
    return True


def sweep(root: Path | None = None) -> list[Path]:
    """Remove the scratch folders of this host's pools that no live process owns; returns them.

    Another machine's folders (a shared TMPDIR), another user's, and any folder without that name
    stay."""
    root = Path(tempfile.gettempdir()) if root is None else root
    host = host_tag()
    removed = []
    for folder in root.glob(f"{PREFIX}{host}-*-*"):
        pid = folder.name[len(PREFIX) + len(host) + 1:].split("-", 1)[0]
        try:
            if not pid.isdigit() or len(pid) > 9 or not folder.is_dir() or folder.stat().st_uid != os.getuid():
                continue
        except OSError:
            continue
        if _remove_if_abandoned(folder, int(pid)):
            removed.append(folder)
    if removed:
        log.info("removed %d scratch folder(s) of killed runs in %s", len(removed), root)
    return removed
