"""The bundle's MANIFEST.json, and data-file digests checked against it on every read.

`file_sha256(root, rel)` hashes the file's actual bytes (through the stat cache of
`core.filehash`, so each file is read once per change) and, when MANIFEST.json lists the file,
refuses (exit 2, naming the file) a file whose bytes no longer match: a flipped byte or a
truncation is caught by `run`, not only by `data check`. The digest, not the manifest's claim,
enters the data fingerprint and so the feature-cache keys.
"""

from __future__ import annotations

import json
from pathlib import Path

from fusebench.core.errors import DataError
from fusebench.core.filehash import sha256_file


def manifest(root: Path) -> dict[str, dict]:
    """MANIFEST.json's entries by path relative to the data root ({} when the root has none)."""
    path = root / "MANIFEST.json"
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc}); restore the bundle's MANIFEST.json") from None
    files = doc.get("files") if isinstance(doc, dict) else None
    if not isinstance(files, list):
        raise DataError(f"{path}: has no 'files' list; restore the bundle's MANIFEST.json")
    out = {}
    for n, entry in enumerate(files):
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str) or not isinstance(entry.get("sha256"), str):
            raise DataError(f"{path}: files[{n}] needs string 'path' and 'sha256' keys, got {entry!r:.120}")
        out[entry["path"].removeprefix("data/")] = entry
    return out


def file_sha256(root: Path, rel: str) -> str:
    """sha256 of the data file `root/rel`'s bytes; a mismatch with MANIFEST.json is a DataError."""
    path = root / rel
    try:
        digest = sha256_file(path)
    except OSError as exc:
        raise DataError(f"data file {path}: cannot be read ({exc.strerror or exc})") from None
    listed = manifest(root).get(rel)
    if listed and listed["sha256"] != digest:
        raise DataError(f"data file {path}: its bytes (sha256 {digest[:12]}…) do not match MANIFEST.json "
                        f"({listed['sha256'][:12]}…): the file was changed or is damaged. Restore it from the bundle "
                        "(`fusebench data check` lists every mismatch)")
    return digest
