"""On-disk feature cache: encode each (dataset revision, split, view, encoder) once.

Entries are `torch.save` files written atomically (temp file + rename), so a killed run never
leaves a half-written entry. `hits`/`misses` count lookups so tests and logs can show that a
second run recomputed nothing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fusebench.core.io import atomic_write_bytes
from fusebench.features.encoders import Features


def cache_key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


@dataclass
class FeatureCache:
    root: Path
    hits: int = 0
    misses: int = 0
    writes: list[str] = field(default_factory=list)

    def path(self, dataset: str, key: str) -> Path:
        return self.root / "features" / dataset / f"{key}.pt"

    def get(self, dataset: str, key: str) -> Features | None:
        path = self.path(dataset, key)
        if not path.is_file():
            self.misses += 1
            return None
        blob = torch.load(path, map_location="cpu", weights_only=True)
        self.hits += 1
        return Features(blob["pooled"], blob.get("tokens"))

    def put(self, dataset: str, key: str, features: Features, meta: dict[str, Any]) -> None:
        import io

        buf = io.BytesIO()
        torch.save({"pooled": features.pooled, "tokens": features.tokens, "meta": json.dumps(meta, default=str)}, buf)
        atomic_write_bytes(self.path(dataset, key), buf.getvalue())
        self.writes.append(key)
