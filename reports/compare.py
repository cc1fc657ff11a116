"""`fusebench compare BASELINE CURRENT`: the regression gate.

A (task, strategy) regresses when its mean main metric dropped by more than `max_drop` AND the drop
exceeds the seed-level noise: baseline mean − t(0.975, Welch df) · √(s_b²/n_b + s_c²/n_c), from the
std over each run's units (search replicates × evaluation seeds) and their counts (`std`, `n_seeds`).
Both runs score the same test set, so test-example sampling is not noise between them: the
leaderboard's 95% CI (which includes it) would hide real regressions. Boards without a usable std
fall back to the baseline's CI lower end, else mean − t-interval half-width. Runs with different
data fingerprints are refused (reliability: run identity). Checks are small
objects whose `fails()` returns a readable line or None (the pytest-benchmark style).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from fusebench.core.errors import UsageError
from fusebench.results.provenance import session_machines


def load_board(path: Path) -> pd.DataFrame:
    """A leaderboard from a run directory or a leaderboard.csv path."""
    path = Path(path)
    csv = path / "leaderboard.csv" if path.is_dir() else path
    if not csv.is_file():
        raise UsageError(f"{csv} not found: pass a run directory (holding leaderboard.csv) or a leaderboard.csv file")
    try:
        board = pd.read_csv(csv)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise UsageError(f"{csv}: not a readable leaderboard CSV ({type(exc).__name__}: {exc}); "
                         "pass the leaderboard.csv a `fusebench run` or `report` wrote") from None
    missing = {"dataset", "strategy", "mean"} - set(board.columns)
    if missing:
        raise UsageError(f"{csv}: not a fusebench leaderboard (missing columns {sorted(missing)})")
    return board


# what decides a run's floating-point results besides the code (bench/results/provenance.py: cpu_identity)
MACHINE_FIELDS = ("cpu_model", "cpu_id", "cpu_flags_sha256", "torch_cpu_capability", "blas", "gpu")


def load_machine(path: Path) -> dict[str, str] | None:
    """The machine fields and torch version a board was made with: the run.json of a run directory, or
    the run.json / machine.json (scripts/update_baseline.sh writes it) beside a leaderboard.csv; None
    when neither is there or readable."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    for name in ("run.json", "machine.json"):
        try:
            data: dict[str, Any] = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        versions = data.get("versions") or {}
        # a run resumed on other machines (run.json `sessions`): each field names every value, in order of use
        infos = session_machines(data)
        out = {k: " + ".join(dict.fromkeys(str(i[k]) for i in infos if i.get(k))) for k in MACHINE_FIELDS
               if any(i.get(k) for i in infos)}
        if versions.get("torch"):
            out["torch"] = str(versions["torch"])
        return out
    return None


def write_machine_file(run_json: str | Path, dest: str | Path) -> None:
    """Write `dest` (a baseline's machine.json) from a run's run.json: its machine (less the hostname)
    and library versions, which `load_machine` reads beside the baseline's leaderboard.csv."""
    run = json.loads(Path(run_json).read_text(encoding="utf-8"))
    machine = {k: v for k, v in (run.get("machine") or {}).items() if k != "hostname"}
    Path(dest).write_text(json.dumps({"machine": machine, "versions": run.get("versions") or {}}, indent=1) + "\n",
                          encoding="utf-8")


def machine_note(baseline: dict[str, str] | None, current: dict[str, str] | None) -> str:
    """One line on whether the two runs share a machine: a deterministic CPU run's numbers repeat on one
    machine and can move on another, so a drop between machines is not necessarily the code's."""
    if baseline is None or current is None:
        which = "baseline" if baseline is None else "current run"
        return (f"machines: the {which}'s machine is not recorded (no run.json or machine.json beside its "
                "leaderboard; scripts/update_baseline.sh writes machine.json): a drift may be the machine's")
    shared = [k for k in (*MACHINE_FIELDS, "torch") if k in baseline and k in current]
    differ = [k for k in shared if baseline[k] != current[k]]
    unknown = [k for k in (*MACHINE_FIELDS, "torch") if (k in baseline) != (k in current)]
    note = (f" (not recorded by both: {', '.join(unknown)})" if unknown else "")
    if not differ:
        return f"machines: the same {', '.join(shared) or 'nothing recorded'}{note}"
    detail = "; ".join(f"{k}: {baseline[k]} vs {current[k]}" for k in differ)
    return (f"machines differ: {detail}{note}. A CPU run repeats bit for bit on one machine, not across CPUs "
            "or kernels: check a regression against a baseline made on this machine (scripts/update_baseline.sh)")


def _finite(row: pd.Series, col: str) -> float | None:
    v = row.get(col, np.nan)
    return float(v) if isinstance(v, (int, float, np.integer, np.floating)) and np.isfinite(v) else None


def _seed_noise_band(b: pd.Series, c: pd.Series) -> tuple[float, float] | None:
    """(low, high) of the baseline mean ± the Welch seed-level half-width of the difference, or None."""
    sb, sc, nb, nc = _finite(b, "std"), _finite(c, "std"), _finite(b, "n_seeds"), _finite(c, "n_seeds")
    if None in (sb, sc, nb, nc) or nb < 2 or nc < 2:  # type: ignore[operator]
        return None
    vb, vc = sb * sb / nb, sc * sc / nc  # type: ignore[operator]
    if vb + vc == 0:
        return float(b["mean"]), float(b["mean"])
    df = (vb + vc) ** 2 / ((vb * vb / (nb - 1) if vb else 0) + (vc * vc / (nc - 1) if vc else 0))  # type: ignore[operator]
    half = float(stats.t.ppf(0.975, df)) * float(np.sqrt(vb + vc))
    return float(b["mean"]) - half, float(b["mean"]) + half


def _noise_floor(row: pd.Series) -> float:
    lo = row.get("ci95_low", np.nan)
    if isinstance(lo, (int, float)) and np.isfinite(lo):
        return float(lo)
    half = row.get("ci95", np.nan)
    if isinstance(half, (int, float)) and np.isfinite(half):
        return float(row["mean"] - half)
    return float(row["mean"] - (row.get("std", 0.0) if np.isfinite(row.get("std", np.nan)) else 0.0))


@dataclass(frozen=True)
class RegressionCheck:
    dataset: str
    strategy: str
    metric: str
    before: float
    after: float
    noise_floor: float
    ci_high: float
    max_drop: float

    def fails(self) -> str | None:
        if not np.isfinite(self.after):
            return (f"REGRESSION {self.dataset} {self.strategy} {self.metric}: {self.before:.4f} → failed "
                    f"(the cell has no score now)")
        drop = self.before - self.after
        if drop > self.max_drop and self.after < self.noise_floor:
            return (f"REGRESSION {self.dataset} {self.strategy} {self.metric}: {self.before:.4f} → {self.after:.4f} "
                    f"(drop {drop:.4f} > max-drop {self.max_drop}, outside the seed-level noise band "
                    f"[{self.noise_floor:.4f}, {self.ci_high:.4f}])")
        return None


@dataclass(frozen=True)
class Comparison:
    regressions: list[str]
    new: list[tuple[str, str]]
    removed: list[tuple[str, str]]
    compared: int

    def report(self) -> str:
        lines = list(self.regressions)
        lines += [f"NEW {d} {s}" for d, s in self.new]
        lines += [f"REMOVED {d} {s}" for d, s in self.removed]
        verdict = "FAIL" if self.regressions else "OK"
        lines.append(f"{verdict}: {self.compared} (task, strategy) pairs compared, {len(self.regressions)} regression(s), "
                     f"{len(self.new)} new, {len(self.removed)} removed")
        return "\n".join(lines)


def _check_identity(baseline: pd.DataFrame, current: pd.DataFrame) -> None:
    """Runs on different data cannot gate each other (reliability: run identity). Boards from before
    identity columns existed carry none and are compared as before."""
    if "data_fingerprint" not in baseline.columns or "data_fingerprint" not in current.columns:
        return
    def prints(b: pd.DataFrame) -> dict[str, str]:
        return {str(d): str(f) for d, f in zip(b["dataset"], b["data_fingerprint"].fillna("")) if f}
    before, after = prints(baseline), prints(current)
    differ = sorted(d for d in set(before) & set(after) if before[d] != after[d])
    if differ:
        detail = "; ".join(f"{d}: {before[d]} vs {after[d]}" for d in differ)
        raise UsageError(f"the runs were made on different data ({detail}); a regression gate compares only runs "
                         "with matching data fingerprints: rerun the baseline on this data")


def compare(baseline: pd.DataFrame, current: pd.DataFrame, max_drop: float) -> Comparison:
    if max_drop < 0:
        raise UsageError(f"--max-drop must be >= 0, got {max_drop}")
    _check_identity(baseline, current)
    base = baseline.set_index(["dataset", "strategy"])
    cur = current.set_index(["dataset", "strategy"])
    checks = []
    for key in base.index.intersection(cur.index):
        b, c = base.loc[key], cur.loc[key]
        if not np.isfinite(b["mean"]):
            continue  # nothing to regress from
        band = _seed_noise_band(b, c)
        if band is None:
            hi = b.get("ci95_high", np.nan)
            band = (_noise_floor(b), float(hi) if isinstance(hi, (int, float)) and np.isfinite(hi) else float(b["mean"]))
        checks.append(RegressionCheck(
            dataset=key[0], strategy=key[1], metric=str(b.get("metric", "")), before=float(b["mean"]),
            after=float(c["mean"]), noise_floor=band[0], ci_high=band[1], max_drop=max_drop,
        ))
    if not checks:
        raise UsageError("the two leaderboards share no (dataset, strategy) pair with a score: nothing to compare; "
                         "compare runs of the same suite")
    regressions = [m for m in (c.fails() for c in checks) if m]
    new = sorted(set(cur.index) - set(base.index))
    removed = sorted(set(base.index) - set(cur.index))
    return Comparison(regressions, list(new), list(removed), len(checks))
