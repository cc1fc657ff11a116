"""Per-task leaderboards from result records: mean ± std over seeds, 95% CI, and whether each
fusion strategy beats the best unimodal baseline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from bench.cache import atomic_write_bytes
from bench.records import Record

FUSION_FAMILIES = ("early", "mid", "late")


def records_frame(records: list[Record]) -> pd.DataFrame:
    rows = [
        {
            "dataset": r.dataset,
            "strategy": r.strategy,
            "family": r.family,
            "seed": r.seed,
            "status": r.status,
            "metric": r.main_metric_name,
            "score": r.main_metric,
            "train_samples_per_s": r.throughput.train_samples_per_s if r.throughput else np.nan,
            "infer_samples_per_s": r.throughput.infer_samples_per_s if r.throughput else np.nan,
            "params_count": r.params_count,
            "error": r.error,
        }
        for r in records
    ]
    return pd.DataFrame(rows)


def _ci95(values: np.ndarray) -> float:
    n = len(values)
    if n < 2:
        return float("nan")
    return float(stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / np.sqrt(n))


def leaderboard(records: list[Record]) -> pd.DataFrame:
    """One row per (dataset, strategy), sorted best first within each dataset."""
    df = records_frame(records)
    if df.empty:
        return df
    rows = []
    for (dataset, strategy), g in df.groupby(["dataset", "strategy"], sort=True):
        ok = g[g.status == "ok"]
        scores = ok.score.to_numpy(dtype=float)
        rows.append(
            {
                "dataset": dataset,
                "strategy": strategy,
                "family": g.family.iloc[0],
                "metric": g.metric.iloc[0] or (ok.metric.iloc[0] if len(ok) else ""),
                "mean": scores.mean() if len(scores) else np.nan,
                "std": scores.std(ddof=1) if len(scores) > 1 else (0.0 if len(scores) else np.nan),
                "ci95": _ci95(scores),
                "n_seeds": len(scores),
                "status": "ok" if len(ok) == len(g) else "failed",
                "train_samples_per_s": ok.train_samples_per_s.median() if len(ok) else np.nan,
                "infer_samples_per_s": ok.infer_samples_per_s.median() if len(ok) else np.nan,
                "params_count": int(ok.params_count.iloc[0]) if len(ok) else 0,
            }
        )
    board = pd.DataFrame(rows)
    board["beats_best_unimodal"] = None
    for dataset, g in board.groupby("dataset"):
        uni = g[(g.family == "unimodal") & (g.status == "ok")]
        if uni.empty:
            continue
        best_uni = uni["mean"].max()
        fusion = g.index[g.family.isin(FUSION_FAMILIES)]
        board.loc[fusion, "beats_best_unimodal"] = board.loc[fusion, "mean"] > best_uni
    board = board.sort_values(["dataset", "mean"], ascending=[True, False], na_position="last")
    board.insert(2, "rank", board.groupby("dataset")["mean"].rank(ascending=False, method="min"))
    return board.reset_index(drop=True)


def _fmt(x: float, digits: int = 4) -> str:
    return "–" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{digits}f}"


def to_markdown(board: pd.DataFrame, title: str = "fusebench leaderboard") -> str:
    lines = [f"# {title}", ""]
    if board.empty:
        return "\n".join(lines + ["No records."]) + "\n"
    for dataset, g in board.groupby("dataset", sort=True):
        metric = next((m for m in g.metric if m), "")
        uni = g[g.family == "unimodal"]
        best_uni = uni.loc[uni["mean"].idxmax()] if uni["mean"].notna().any() else None
        lines += [f"## {dataset} — {metric}", ""]
        if best_uni is not None:
            lines += [f"Best unimodal baseline: `{best_uni.strategy}` ({_fmt(best_uni['mean'])}).", ""]
        lines += [
            "| rank | strategy | family | mean ± std | 95% CI | seeds | beats best unimodal | train samples/s | infer samples/s | params |",
            "|---:|---|---|---|---|---:|:---:|---:|---:|---:|",
        ]
        for _, r in g.iterrows():
            beats = {True: "✅ yes", False: "❌ no"}.get(r.beats_best_unimodal, "")
            if r.status != "ok":
                beats = "failed"
            rank = "–" if np.isnan(r["rank"]) else int(r["rank"])
            lines.append(
                f"| {rank} | `{r.strategy}` | {r.family} | {_fmt(r['mean'])} ± {_fmt(r['std'])} | ± {_fmt(r.ci95)} | "
                f"{r.n_seeds} | {beats} | {_fmt(r.train_samples_per_s, 0)} | {_fmt(r.infer_samples_per_s, 0)} | {r.params_count:,} |"
            )
        lines.append("")
    return "\n".join(lines)


def write_leaderboard(records: list[Record], run_dir: Path) -> pd.DataFrame:
    board = leaderboard(records)
    atomic_write_bytes(run_dir / "leaderboard.md", to_markdown(board).encode())
    atomic_write_bytes(run_dir / "leaderboard.csv", board.to_csv(index=False).encode())
    return board
