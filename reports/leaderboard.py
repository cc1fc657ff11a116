"""Per-task leaderboards from result records: mean ± std over seeds, 95% CI, and whether each
fusion strategy beats the best unimodal baseline.

Statistics come from each record's `stats` (bench.stats, computed by the runner from the saved
per-example predictions): `ci95_low`/`ci95_high` (two-level bootstrap over seeds and test
examples), `p_vs_best_unimodal` / `p_vs_late_fusion` (paired two-level bootstrap, two-sided) and
`beats_best_unimodal` (higher mean AND p < 0.05). Records without stats (older runs) fall back to
a t-interval over seeds (`ci95`, half-width) and a plain comparison of means."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from fusebench.core.io import atomic_write_bytes
from fusebench.results.records import Record

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
            "stats": r.stats or None,
        }
        for r in records
    ]
    return pd.DataFrame(rows)


def _num(x: object) -> float:
    return float("nan") if x is None else float(x)  # type: ignore[arg-type]


def _stars(p: float) -> str:
    """Significance marker of a p-value (two-sided, no multiple-comparison correction)."""
    if p is None or np.isnan(p):
        return ""
    return "***" if p < 0.001 else "**" if p < 0.01 else "*" if p < 0.05 else "n.s."


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
        st = next((x for x in ok.stats if x), None) or {}
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
                "ci95_low": _num(st.get("ci95_low")),
                "ci95_high": _num(st.get("ci95_high")),
                "p_vs_best_unimodal": _num(st.get("p_vs_best_unimodal")),
                "p_vs_late_fusion": _num(st.get("p_vs_late_fusion")),
                "best_unimodal": st.get("best_unimodal"),
                "_beats": st.get("beats_best_unimodal") if st else "no-stats",
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
        with_stats = [i for i in fusion if board.at[i, "_beats"] != "no-stats"]
        for i in with_stats:  # the significance rule of bench.stats: higher mean AND p < 0.05
            board.at[i, "beats_best_unimodal"] = board.at[i, "_beats"]
    board = board.drop(columns="_beats")
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
            "| rank | strategy | family | mean ± std | 95% CI | p vs best unimodal | p vs logit_mean | seeds "
            "| beats best unimodal | train samples/s | infer samples/s | params |",
            "|---:|---|---|---|---|---|---|---:|:---:|---:|---:|---:|",
        ]
        for _, r in g.iterrows():
            beats = {True: "✅ yes", False: "❌ no"}.get(r.beats_best_unimodal, "")
            if r.status != "ok":
                beats = "failed"
            rank = "–" if np.isnan(r["rank"]) else int(r["rank"])
            if np.isnan(r.ci95_low):
                ci = f"± {_fmt(r.ci95)}"
            else:
                ci = f"[{_fmt(r.ci95_low)}, {_fmt(r.ci95_high)}]"
            p_uni = "" if np.isnan(r.p_vs_best_unimodal) else f"{r.p_vs_best_unimodal:.3g} {_stars(r.p_vs_best_unimodal)}"
            p_late = "" if np.isnan(r.p_vs_late_fusion) else f"{r.p_vs_late_fusion:.3g} {_stars(r.p_vs_late_fusion)}"
            lines.append(
                f"| {rank} | `{r.strategy}` | {r.family} | {_fmt(r['mean'])} ± {_fmt(r['std'])} | {ci} | {p_uni} | {p_late} | "
                f"{r.n_seeds} | {beats} | {_fmt(r.train_samples_per_s, 0)} | {_fmt(r.infer_samples_per_s, 0)} | {r.params_count:,} |"
            )
        lines.append("")
    lines += [
        "95% CI: two-level bootstrap over evaluation seeds and test examples (1000 resamples) where the run saved",
        "per-example predictions, else a t-interval over seeds (±). p: paired two-level bootstrap on the same seeds and",
        "examples, two-sided, uncorrected (* < 0.05, ** < 0.01, *** < 0.001, n.s. otherwise). A fusion strategy beats",
        "the best unimodal baseline when its mean is higher AND p vs best unimodal < 0.05.",
        "",
    ]
    return "\n".join(lines)


def write_leaderboard(records: list[Record], run_dir: Path) -> pd.DataFrame:
    from fusebench.reports.ranking import rank

    board = leaderboard(records)
    text = to_markdown(board) + "\n" + rank(board).to_markdown()
    atomic_write_bytes(run_dir / "leaderboard.md", text.encode())
    from fusebench.reports.pareto import write_pareto

    write_pareto(records, board, run_dir)
    atomic_write_bytes(run_dir / "leaderboard.csv", board.to_csv(index=False).encode())
    return board
