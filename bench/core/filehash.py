"""sha256 of files' actual bytes, hashed once and reused while size and mtime are unchanged.

Provenance must not trust a manifest: a data file changed under an unchanged MANIFEST.json has to
change the fingerprint and the cache keys. Hashing gigabytes on every run would be slow, so digests
are kept in a small stat cache (`cache_root()/sha256-stat.json`, keyed by absolute path, holding
size, mtime_ns and inode); any change of those rehashes the file. A read-only cache just rehashes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from pathlib import Path

from fusebench.core.io import atomic_write_bytes
from fusebench.core.paths import cache_root

log = logging.getLogger(__name__)
_LOCK = threading.Lock()
_MEMO: dict[str, dict] | None = None


def _stat_path() -> Path:
    return cache_root() / "sha256-stat.json"


def _load() -> dict[str, dict]:
    global _MEMO
    if _MEMO is None:
        try:
            data = json.loads(_stat_path().read_text())
            _MEMO = data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            _MEMO = {}
    return _MEMO


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_file(path: Path) -> str:
    """sha256 (hex) of `path`'s bytes, from the stat cache when size, mtime and inode are unchanged."""
    path = Path(path).resolve()
    st = path.stat()
    stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}
    with _LOCK:
        memo = _load()
        known = memo.get(str(path))
        if known and all(known.get(k) == v for k, v in stamp.items()):
            return str(known["sha256"])
    digest = _digest(path)
    with _LOCK:
        memo = _load()
        memo[str(path)] = {**stamp, "sha256": digest}
        try:
            atomic_write_bytes(_stat_path(), json.dumps(memo, sort_keys=True).encode())
        except OSError as exc:
            log.debug("sha256 stat cache not written (%s)", exc)
    return digest


def forget() -> None:
    """Drop the in-memory copy (tests that change the cache root)."""
    global _MEMO
    with _LOCK:
        _MEMO = None


def source_version(folder: Path) -> str:
    """sha256 (12 hex) of a package folder's Python sources (names and bytes): a code version that
    changes whenever the code that built or encoded data changes, so fingerprints cannot go stale."""
    h = hashlib.sha256()
    for src in sorted(Path(folder).glob("*.py")):
        h.update(src.name.encode() + src.read_bytes())
    return h.hexdigest()[:12]
