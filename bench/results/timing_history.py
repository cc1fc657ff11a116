"""Time to leaderboard, tracked: a committed CSV of runs' wall times, and a slowdown check against it.

Each row is one finished run (its `run.json`): when, which fusebench (version + git revision), on
what machine (CPU model, cores, device), which suite (and config hash) over how many cells, the
total seconds and every phase (`phases`: data, encoding, cells, statistics, leaderboard, report;
`cell_seconds`: search, evaluation, robustness, throughput, process-seconds summed over cells).

`compare` sets a run next to the rows of the same machine and suite and flags a slowdown when its
total exceeds `factor` × the median of the last `last` such rows. Machines differ (CI runners
above all), so the check is a warning by default; rows of another machine or suite are never
compared. Used by `fusebench timing record|compare` and printed by `.ci/run`.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fusebench.core.errors import DataError

RUN_PHASES = ("data", "encoding", "cells", "statistics", "leaderboard", "report")
CELL_PHASES = ("search", "evaluation", "robustness", "throughput")
COLUMNS = ("date", "fusebench", "revision", "cpu", "cores", "device", "suite", "config_hash", "cells",
           "total_s", *(f"{p}_s" for p in RUN_PHASES), *(f"cell_{p}_s" for p in CELL_PHASES))


def _cells(run_dir: Path) -> int:
    results = run_dir / "results.jsonl"
    if not results.is_file():
        return 0
    keys = set()
    for line in results.read_text(encoding="utf-8").splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        keys.add((r.get("dataset"), r.get("strategy")))
    return len(keys)


def _this_cpu_if_here(machine: dict[str, Any]) -> str | None:
    """A run.json from before `cpu_model` was recorded: this machine's CPU when the run was made here."""
    import platform

    from fusebench.results.provenance import cpu_model

    return cpu_model() if machine.get("hostname") == platform.node() else None


def row_from_run(run_dir: Path) -> dict[str, str]:
    """The history row of a finished run directory (DataError naming the file when it is not one)."""
    path = run_dir / "run.json"
    try:
        meta: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: no run.json; give the directory of a finished `fusebench run`") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(meta.get("seconds"), (int, float)) or not isinstance(meta.get("phases"), dict):
        raise DataError(f"{path}: field 'seconds' or 'phases' missing; the run did not finish (re-run it to resume)")
    from fusebench.results.provenance import machines  # torch: only when a row is made

    machine = meta.get("machine") or {}
    identity = meta.get("identity") or {}
    suite = identity.get("suite") or ((meta.get("config") or {}).get("suite") or {}).get("name", "")
    date = meta.get("finished_at") or meta.get("started_at") or dt.datetime.now(dt.timezone.utc).isoformat()
    phases, cells = meta["phases"], meta.get("cell_seconds") or {}
    row = {
        "date": str(date)[:19],
        "fusebench": str((meta.get("versions") or {}).get("fusebench", "")),
        "revision": str(meta.get("source_revision") or meta.get("git_sha") or "")[:12]
        + ("-dirty" if str(meta.get("source_revision") or "").endswith("-dirty") else ""),
        "cpu": str(machine.get("cpu_model") or _this_cpu_if_here(machine) or machine.get("processor") or ""),
        "cores": str(machine.get("cpu_count", "")),
        # a run resumed on other machines: its times are theirs together, compared with no one machine's rows
        "device": " + ".join(ran_on) if len(ran_on := machines(meta)) > 1 else
                  str(machine.get("gpu") or machine.get("device") or ""),
        "suite": str(suite),
        "config_hash": str(identity.get("config_hash", "")),
        "cells": str(_cells(run_dir)),
        "total_s": f"{float(meta['seconds']):.1f}",
    }
    row.update({f"{p}_s": f"{float(phases[p]):.1f}" if p in phases else "" for p in RUN_PHASES})
    row.update({f"cell_{p}_s": f"{float(cells[p]):.1f}" if p in cells else "" for p in CELL_PHASES})
    return row


def read_history(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("date", "cpu", "cores", "device", "suite", "total_s") if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path}: not a time-to-leaderboard history (columns {missing} missing); "
                            f"expected the header {','.join(COLUMNS)}")
        return list(reader)


def append_row(path: Path, row: dict[str, str]) -> None:
    """Append `row` (creating the file with its header); a row already there (same date, revision,
    suite, machine) is not added twice."""
    rows = read_history(path)
    same = ("date", "revision", "suite", "cpu", "total_s")
    if any(all(r.get(k) == row[k] for k in same) for r in rows):
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.is_file() or path.stat().st_size == 0
    with path.open("a", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow({c: row.get(c, "") for c in COLUMNS})


def _key(row: dict[str, str]) -> tuple[str, ...]:
    return (row.get("cpu", ""), row.get("cores", ""), row.get("device", ""), row.get("suite", ""))


@dataclass(frozen=True)
class Comparison:
    """A run against the history of its machine and suite."""

    run: dict[str, str]
    peers: list[dict[str, str]]  # the last rows of the same machine and suite (the run itself excluded)
    median_s: float | None
    factor: float

    @property
    def ratio(self) -> float | None:
        return float(self.run["total_s"]) / self.median_s if self.median_s else None

    @property
    def slowdown(self) -> bool:
        return self.ratio is not None and self.ratio > self.factor

    def message(self) -> str:
        head = (f"time to leaderboard: {self.run['total_s']} s ({self.run['suite']}, {self.run['cells']} cells, "
                f"{self.run['cpu']} × {self.run['cores']}, {self.run['device']})")
        if self.median_s is None:
            return f"{head}; no earlier row of this machine and suite to compare with"
        verdict = (f"SLOWDOWN: {self.ratio:.2f}× the median {self.median_s:.1f} s of the last {len(self.peers)} "
                   f"row(s) (threshold {self.factor:g}×)" if self.slowdown else
                   f"{self.ratio:.2f}× the median {self.median_s:.1f} s of the last {len(self.peers)} row(s): ok")
        return f"{head}; {verdict}"


def compare(run: dict[str, str], history: list[dict[str, str]], factor: float = 1.5, last: int = 5) -> Comparison:
    peers = [r for r in history if _key(r) == _key(run)
             and not (r.get("date") == run["date"] and r.get("revision") == run["revision"])][-last:]
    totals = [float(r["total_s"]) for r in peers if r.get("total_s")]
    return Comparison(run, peers, statistics.median(totals) if totals else None, factor)


def table(run: dict[str, str], peers: list[dict[str, str]]) -> str:
    """The run under its peers, one line each: date, revision, total and the main phases."""
    cols = ("date", "revision", "total_s", "data_s", "encoding_s", "cells_s", "cell_search_s", "cell_evaluation_s")
    lines = ["  ".join(f"{c:>19s}" if c == "date" else f"{c:>17s}" for c in cols)]
    for label, r in [*(("", p) for p in peers), ("this run", run)]:
        cells = [f"{r.get(c, ''):>19s}" if c == "date" else f"{r.get(c, ''):>17s}" for c in cols]
        lines.append("  ".join(cells) + (f"  <- {label}" if label else ""))
    return "\n".join(lines)
