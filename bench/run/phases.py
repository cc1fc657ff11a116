"""Time to leaderboard: wall time per phase of a run, recorded in `run.json` (issue 15).

Phases measured in the run process: `data` (tables built from parquet), `encoding` (features,
cached or computed; with the seconds of chunks resumed from an interrupted encode's checkpoints,
which the killed process never recorded), `cells` (wall time of the sweep: search + evaluation of every cell, in
parallel when `--jobs` > 1), `statistics` (intervals and tests), `leaderboard`; `report` is added
by `fusebench report`. Inside cells the records carry each phase's seconds, and `cell_seconds`
sums them over the run (`search`, `evaluation`, `robustness`, `throughput`): process-seconds, which
exceed the `cells` wall time when cells run in parallel.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fusebench.core.io import atomic_write_bytes
from fusebench.results.records import Record

log = logging.getLogger(__name__)
PHASES = ("data", "encoding", "cells", "statistics", "leaderboard", "report")


@dataclass
class PhaseClock:
    """Accumulates wall seconds per phase; `with clock.phase("encoding"): ...`."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

    def add(self, name: str, seconds: float) -> None:
        """Count `seconds` spent outside this process's clock (an interrupted encode's saved chunks)."""
        if seconds:
            self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def as_dict(self, previous: dict[str, float] | None = None) -> dict[str, float]:
        """This process's phases added to those of earlier (resumed) processes of the same run."""
        out = dict(previous or {})
        for k, v in self.seconds.items():
            out[k] = round(out.get(k, 0.0) + v, 3)
        return out


def save_with_sweep_time(meta: dict[str, object], clock: PhaseClock, previous: dict[str, float], sweep_t0: float,
                         run_json: Path, on_the_way_out: bool = False) -> None:
    """Write run.json with the phases so far and the running sweep's wall time since `sweep_t0`
    (perf_counter), so that a stop, an interrupt or a kill of this process keeps it; the sweep's
    seconds enter `clock` only when it ends. `on_the_way_out` (the sweep's `finally`): a failed write is
    logged, not raised, so that it cannot replace the error that ends the sweep (a full disk's, naming
    the file that filled it); otherwise it raises like any write of the run."""
    phases = clock.as_dict(previous)
    phases["cells"] = round(phases.get("cells", 0.0) + time.perf_counter() - sweep_t0, 3)
    meta["phases"] = phases
    try:
        atomic_write_bytes(run_json, json.dumps(meta, indent=2, default=str).encode())
    except OSError as exc:
        if not on_the_way_out:
            raise
        log.warning("%s: the wall time per phase was not saved (%s)", run_json, exc.strerror or exc)


def cell_seconds(records: list[Record]) -> dict[str, float]:
    """Process-seconds per in-cell phase over a run's ok records (search counted once per replicate)."""
    out: dict[str, float] = {"search": 0.0}
    searched = set()
    for r in records:
        if r.status != "ok":
            continue
        key = (r.dataset, r.strategy, r.replicate)
        if key not in searched:
            searched.add(key)
            out["search"] += r.search_seconds
        for phase, s in r.phase_seconds.items():
            out[phase] = out.get(phase, 0.0) + s
    return {k: round(v, 3) for k, v in out.items()}


def add_report_seconds(run_dir: Path, seconds: float) -> None:
    """`fusebench report` adds its own wall time to run.json's phases (when the run has a run.json)."""
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        return
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    phases = meta.setdefault("phases", {})
    phases["report"] = round(seconds, 3)
    atomic_write_bytes(path, json.dumps(meta, indent=2, default=str).encode())
