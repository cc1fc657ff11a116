"""`fusebench data check`: verify the bundle against MANIFEST.json and count rows per split."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from fusebench.core.errors import DataError
from fusebench.data.manifest import manifest as read_manifest


@dataclass
class FileCheck:
    path: str
    ok: bool
    problem: str = ""
    rows: dict[str, int] = field(default_factory=dict)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _rows(path: Path) -> dict[str, int]:
    if path.suffix == ".parquet":
        pf = pq.ParquetFile(path)
        if "split" in pf.schema_arrow.names:
            return dict(sorted(Counter(pq.read_table(path, columns=["split"]).column("split").to_pylist()).items()))
        return {"all": pf.metadata.num_rows}
    if path.suffix == ".npz":
        with np.load(path) as z:
            return {k.removeprefix("y_"): len(z[k]) for k in z.files if k.startswith("y_")}
    return {}


def check(root: Path) -> list[FileCheck]:
    manifest = root / "MANIFEST.json"
    if not manifest.is_file():
        raise DataError(f"{manifest} not found: the data root must hold the bundle's MANIFEST.json")
    entries = list(read_manifest(root).values())
    out = []
    for e in entries:
        rel = e["path"].removeprefix("data/")
        path = root / rel
        if not path.is_file():
            out.append(FileCheck(rel, False, "missing"))
            continue
        if "bytes" in e and path.stat().st_size != e["bytes"]:
            out.append(FileCheck(rel, False, f"size {path.stat().st_size} != manifest {e['bytes']}"))
            continue
        digest = _sha256(path)
        if digest != e["sha256"]:
            out.append(FileCheck(rel, False, f"sha256 {digest[:12]}… != manifest {e['sha256'][:12]}…"))
            continue
        out.append(FileCheck(rel, True, rows=_rows(path)))
    return out


def format_report(root: Path, checks: list[FileCheck]) -> str:
    lines = [f"data root: {root}"]
    by_dataset: dict[str, Counter] = {}
    for c in checks:
        status = "ok " if c.ok else "BAD"
        rows = ", ".join(f"{k}={v}" for k, v in c.rows.items())
        lines.append(f"  [{status}] {c.path}{'  ' + rows if rows else ''}{'  ' + c.problem if c.problem else ''}")
        if c.rows:
            by_dataset.setdefault(c.path.split("/")[0], Counter()).update(c.rows)
    lines.append("rows per split:")
    for ds, counts in sorted(by_dataset.items()):
        lines.append(f"  {ds:10s} " + "  ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    bad = sum(not c.ok for c in checks)
    lines.append(f"{len(checks) - bad}/{len(checks)} files match MANIFEST.json" + (f"; {bad} do not" if bad else ""))
    return "\n".join(lines)
