"""On-disk feature cache: encode each (dataset revision, split, view, encoder) once.

Entries are `torch.save` files written atomically (temp file + rename), so a killed run never
leaves a half-written entry. Each entry carries a sha256 of its tensors' bytes: an entry that does
not load (garbage, truncated), lacks the checksum (an older format) or whose values do not match it
(replaced by well-formed other values) is named in a warning, removed and recomputed. A cache in a
read-only place still serves its complete entries (nothing is written, no lock file is needed);
new entries are then computed but not stored. `hits`/`misses`/`bad` count lookups so tests and logs
can show that a second run recomputed nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fusebench.core.io import atomic_write_bytes
from fusebench.features.encoders import Features

log = logging.getLogger(__name__)
FORMAT = 2  # entries of format 1 had no checksum and are recomputed


def cache_key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def checksum(features: Features) -> str:
    """sha256 of the tensors' dtype, shape and bytes (pooled, then tokens)."""
    h = hashlib.sha256()
    for t in (features.pooled, features.tokens):
        if t is None:
            h.update(b"none")
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _diff(before: Any, after: Any, prefix: str = "") -> list[str]:
    """Dotted names of the leaves that differ between two JSON-like values."""
    if isinstance(before, dict) and isinstance(after, dict):
        out = []
        for k in sorted(set(before) | set(after)):
            out += _diff(before.get(k), after.get(k), f"{prefix}{k}.")
        return out
    return [] if before == after else [f"{prefix.rstrip('.')}: {before!r:.40} → {after!r:.40}"]


@dataclass
class FeatureCache:
    root: Path
    hits: int = 0
    misses: int = 0
    bad: list[str] = field(default_factory=list)  # entries found corrupt, removed and recomputed
    writes: list[str] = field(default_factory=list)

    def path(self, dataset: str, key: str) -> Path:
        return self.root / "features" / dataset / f"{key}.pt"

    def _reject(self, path: Path, why: str) -> None:
        log.warning("feature cache entry %s is bad (%s): removed, recomputing it", path, why)
        self.bad.append(str(path))
        try:
            path.unlink()
        except OSError as exc:
            log.warning("could not remove %s (%s); it will be skipped again next time", path, exc.strerror or exc)

    def get(self, dataset: str, key: str) -> Features | None:
        path = self.path(dataset, key)
        if not path.is_file():
            self.misses += 1
            return None
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            feats = Features(blob["pooled"], blob.get("tokens"))
            stored = blob.get("sha256")
        except Exception as exc:
            self._reject(path, f"unreadable: {type(exc).__name__}")
            self.misses += 1
            return None
        if not stored:
            self._reject(path, "no checksum (an older cache format)")
        elif checksum(feats) != stored:
            self._reject(path, "its values do not match its checksum")
        else:
            self.hits += 1
            return feats
        self.misses += 1
        return None

    def explain(self, dataset: str, slot: str, key: str, parts: dict[str, Any]) -> str | None:
        """Remember what `slot` (split/view) of `dataset` was keyed on; when the key changed since the last
        run, say which inputs changed (the entry is then recomputed: nothing stale is reused silently)
        and return the previous key (None when it is unchanged or unknown)."""
        index_path = self.root / "features" / dataset / "index.json"
        try:
            index = json.loads(index_path.read_text())
        except (OSError, ValueError):
            index = {}
        before = index.get(slot) if isinstance(index, dict) else None
        if before and before.get("key") != key:
            changed = _diff(before.get("parts", {}), json.loads(json.dumps(parts, default=str)))
            log.warning("%s %s: inputs changed (%s); its features are recomputed", dataset, slot,
                        ", ".join(changed) or "key format")
        if not before or before.get("key") != key:
            index = index if isinstance(index, dict) else {}
            index[slot] = {"key": key, "parts": parts}
            try:
                atomic_write_bytes(index_path, json.dumps(index, sort_keys=True, default=str).encode())
            except OSError:
                pass  # a read-only cache: nothing to remember
        previous = before.get("key") if before else None
        return previous if isinstance(previous, str) and previous != key else None

    def put(self, dataset: str, key: str, features: Features, meta: dict[str, Any]) -> None:
        """Store an entry; in a read-only cache, warn once and go on without storing."""
        buf = io.BytesIO()
        torch.save({"pooled": features.pooled, "tokens": features.tokens, "sha256": checksum(features),
                    "format": FORMAT, "meta": json.dumps(meta, default=str)}, buf)
        try:
            atomic_write_bytes(self.path(dataset, key), buf.getvalue())
        except OSError as exc:
            log.warning("feature cache %s is not writable (%s): %s/%s computed but not stored",
                        self.root, exc.strerror or exc, dataset, key)
            return
        self.writes.append(key)
