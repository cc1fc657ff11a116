"""A full disk is the user's to fix, not a crash: one test for it and the message the CLI prints.

Writes that fill the disk raise `OSError(ENOSPC)` (or `EDQUOT`, a full quota) from wherever they
happen: results.jsonl, run.json, the optuna journal, cached features, plots. The writers that know
their file attach its name (`naming`), nothing else handles the error on the way up, and the
command line maps it to exit 2 with `message` (bench/cli.py). What was written before stays whole:
every run file is replaced atomically (bench/core/io.py) and the journal repairs a torn last record
on open (bench/search/journal.py), so re-running the same command resumes.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_disk_full(exc: BaseException) -> bool:
    """True for the OSError a write raises when the filesystem (or the user's quota) is full."""
    return isinstance(exc, OSError) and exc.errno in DISK_FULL


def naming(exc: OSError, path: Path | str) -> OSError:
    """The same error naming `path`, the file being written (write() and fsync() errors name no file,
    an atomic write's error names its temporary copy); the original is kept as `__cause__`."""
    named = OSError(exc.errno, exc.strerror or os.strerror(exc.errno or 0), str(path))
    named.__cause__ = exc
    return named


def _free(path: Path) -> str:
    folder = next((p for p in (path, *path.parents) if p.is_dir()), None)
    if folder is None:
        return "unknown space"
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return "unknown space"
    return f"{free / 2**20:,.1f} MiB"


def message(exc: OSError) -> str:
    """What the user reads on a full disk: the file, the space left, what to free, how to go on."""
    from fusebench.core.paths import cache_root

    what = "the disk quota is exhausted" if exc.errno == errno.EDQUOT else "no space left on device"
    target = Path(exc.filename) if exc.filename is not None else None
    where = f" while writing {target}" if target is not None else ""
    left = f" ({_free(target)} free there)" if target is not None else ""
    try:
        cache = str(cache_root())
    except Exception:  # a bad $FUSEBENCH_CACHE is not what this message is about
        cache = "$FUSEBENCH_CACHE"
    disk = "that filesystem" if target is not None else "the filesystems of --out and the cache"
    return (f"{what}{where}{left}. Free space on {disk} (old run directories, the feature cache "
            f"{cache}, whose entries are rebuilt on demand) or choose another --out, then re-run the same command: "
            "records, cached features and finished trials written so far are kept and the run resumes where it stopped")
