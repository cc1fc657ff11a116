"""Per-task leaderboards from result records: a verdict in words at the top of every task, then one row
per strategy with mean ± std, its 95 % interval, the difference from the best unimodal baseline with
raw and Holm-adjusted p, the honest-budget columns and flags (degenerate, cap bound).

Statistics come from each record's `stats` (`fusebench.results.stats`, computed by the runner from the
saved per-example predictions): intervals from the search replicate → seed → test-cluster variance
decomposition, the paired test, Holm over each task's fusion-vs-best-unimodal family, the best
unimodal chosen on validation. Records without stats (older runs) fall back to a t-interval over
seeds (`ci95`, half-width) and a plain comparison of means. The per-task verdict and the overall
ranking sentence are plain functions (`task_verdict`, `ranking_sentence`, in `reports.verdicts`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from fusebench.core.io import atomic_write_bytes
from fusebench.reports.verdicts import device_note, fmt_p, fmt_trials, is_retrieval, mean_digits, ranking_sentence, task_verdict
from fusebench.results.records import Record

__all__ = ["device_note", "fmt_p", "leaderboard", "ranking_sentence", "task_verdict", "to_markdown", "write_leaderboard"]

FUSION_FAMILIES = ("early", "mid", "late")


def _complete(r: Record) -> int:
    """Completed trials; records from before pruned/failed were counted hold only `n_trials` (done trials)."""
    parts = [getattr(r, f, 0) or 0 for f in ("n_trials_complete", "n_trials_pruned", "n_trials_failed")]
    return parts[0] if sum(parts) > 0 else r.n_trials


def records_frame(records: list[Record]) -> pd.DataFrame:
    rows = [
        {
            "dataset": r.dataset,
            "task": r.task,
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
            "replicate": getattr(r, "replicate", 0) or 0,
            "trials_complete": _complete(r),
            "trials_budget": r.n_trials_budget,
            "trials_pruned": getattr(r, "n_trials_pruned", np.nan),
            "trials_failed": getattr(r, "n_trials_failed", np.nan),
            "cap_bound": getattr(r, "cap_bound", None),
            "search_seconds": r.search_seconds,
            "best_epoch": r.best_epoch if r.best_epoch is not None else np.nan,
            "device": r.device or "",
        }
        for r in records
    ]
    return pd.DataFrame(rows)


def _num(x: object) -> float:
    return float("nan") if x is None else float(x)  # type: ignore[arg-type]


def _per_search_sum(ok: pd.DataFrame, col: str) -> float:
    """A per-search quantity (repeated on every seed's record) summed over the cell's search replicates."""
    v = ok.groupby("replicate")[col].first()
    return float(v.sum()) if v.notna().any() else np.nan


def _stars(p: float) -> str:
    """Significance marker of a p-value (two-sided)."""
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
                "task": g.task.iloc[0],  # after the first columns, which readers of leaderboard.csv rely on
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
                "p_adj_vs_best_unimodal": _num(st.get("p_adj_vs_best_unimodal")),
                "delta_vs_best_unimodal": _num(st.get("delta_vs_best_unimodal")),
                "delta_ci95_low": _num(st.get("delta_ci95_low")),
                "delta_ci95_high": _num(st.get("delta_ci95_high")),
                "test_note": st.get("test_note", ""),
                # a retrieval task's comparison (bench/results/retrieval_stats.py): each re-ranker vs the dual encoder
                "delta_vs_dual_encoder": _num(st.get("delta_vs_dual_encoder")),
                "p_vs_dual_encoder": _num(st.get("p_vs_dual_encoder")),
                "beats_dual_encoder": st.get("beats_dual_encoder"),
                "n_replicates": int(ok.replicate.nunique()) if len(ok) else 0,
                "includes_search_variance": st.get("includes_search_variance"),
                "degenerate": st.get("degenerate"),
                "best_epoch": float(ok.best_epoch.median()) if ok.best_epoch.notna().any() else np.nan,
                # honest budget: trials per search replicate (summed over replicates), search seconds summed too
                "trials_complete": _per_search_sum(ok, "trials_complete"),
                "trials_budget": _per_search_sum(ok, "trials_budget"),
                "trials_pruned": _per_search_sum(ok, "trials_pruned"),
                "trials_failed": _per_search_sum(ok, "trials_failed"),
                "search_seconds": _per_search_sum(ok, "search_seconds"),
                "cap_bound": bool(ok.cap_bound.eq(True).any()) if ok.cap_bound.notna().any() else None,
                "device": "; ".join(sorted(set(ok.device) - {""})),  # where its samples/s were measured
                "provisional": st.get("provisional", ""),  # bench/results/provisional.py: a task not finished yet
                "_beats": st.get("beats_best_unimodal") if st else "no-stats",
            }
        )
    board = pd.DataFrame(rows)
    board["beats_best_unimodal"] = None
    for _dataset, g in board.groupby("dataset"):
        uni = g[(g.family == "unimodal") & (g.status == "ok")]
        if uni.empty:
            continue
        best_uni = uni["mean"].max()
        fusion = g.index[g.family.isin(FUSION_FAMILIES)]
        with_stats = [i for i in fusion if board.at[i, "_beats"] != "no-stats"]
        if board.loc[g.index, "_beats"].eq("no-stats").all():  # no statistics (old runs): a plain comparison of means
            board.loc[fusion, "beats_best_unimodal"] = board.loc[fusion, "mean"] > best_uni
        for i in with_stats:  # the significance rule of bench.stats: higher mean AND p < 0.05; a row without
            board.at[i, "beats_best_unimodal"] = board.at[i, "_beats"]  # stats beside them (unfinished): not tested
    board = board.drop(columns="_beats")
    board = board.sort_values(["dataset", "mean"], ascending=[True, False], na_position="last")
    board.insert(2, "rank", board.groupby("dataset")["mean"].rank(ascending=False, method="min"))
    return board.reset_index(drop=True)


def _fmt(x: float, digits: int = 4) -> str:
    return "–" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{digits}f}"


def trials_text(r: pd.Series) -> str:
    """A board row's search budget as every leaderboard (Markdown, HTML) prints it (`fmt_trials`)."""
    return fmt_trials(r.trials_complete, r.trials_budget, r.trials_pruned, r.trials_failed)


def row_flags(r: pd.Series, symbols: bool = True) -> str:
    """A board row's warnings (degenerate, cap bound); `symbols=False` drops the ⚠/⏱ marks (the HTML
    report: a browser without an emoji font draws them as empty boxes)."""
    flags = []
    if r.get("degenerate") is True:
        epoch = f", best epoch {int(r.best_epoch)}" if np.isfinite(r.best_epoch) else ""
        flags.append(("⚠ " if symbols else "") + f"degenerate{epoch}")
    if r.get("cap_bound") is True:
        flags.append(("⏱ " if symbols else "") + "cap bound")
    return "; ".join(flags)


def _delta_cell(r: pd.Series) -> str:
    if not np.isfinite(r.delta_vs_best_unimodal):
        return ""
    ci = f" [{r.delta_ci95_low:+.4f}, {r.delta_ci95_high:+.4f}]" if np.isfinite(r.delta_ci95_low) else ""
    return f"{r.delta_vs_best_unimodal:+.4f}{ci}"


def _p_cell(p: float, note: str = "") -> str:
    if np.isfinite(p):
        return f"{fmt_p(p)} {_stars(p)}"
    return "n/t (R=1)" if isinstance(note, str) and "R=1" in note else ""  # NaN: a board read back from CSV


LEGEND = [
    "**Columns.** *mean ± std*: main test metric over all runs of the cell (search replicates × evaluation seeds), std over",
    "those runs. *95% CI*: interval of the mean from the variance decomposition — search replicates (t on R−1 df, carrying",
    "the seed variance) plus a test-**cluster** bootstrap (1000 resamples of images/recordings/source files, not rows);",
    "with R = 1 the replicate level is degenerate, so the interval holds seed and test variance only (too narrow by the",
    "unknown search effect); intervals are clipped to the metric's range ([0, 1] for accuracy, macro-F1, AUROC); `± x` is",
    "a t-interval over seeds for runs without saved predictions. The next five columns are not a retrieval task's (its",
    "comparison with the dual encoder is the retrieval detail). *Δ vs best unimodal*:",
    "difference from the best unimodal baseline, chosen on **validation**, with its 95% interval. *p raw*: paired test",
    "(same test clusters, independent searches), two-sided, Student t with Welch–Satterthwaite df; `n/t (R=1)` = not",
    "testable with one search per cell. *p Holm*: Holm-adjusted over the task's fusion-vs-best-unimodal family (* < 0.05,",
    "** < 0.01, *** < 0.001). *beats best unimodal*: Δ > 0 AND Holm-adjusted p < 0.05. *p vs logit_mean*: the same",
    "paired test against the late-fusion baseline, raw. *R×K*: search replicates × evaluation seeds. *trials*:",
    "completed/budgeted optuna trials summed over replicates (pruned, failed when recorded). *search s*: search seconds",
    "(CPU seconds on a CPU run, wall on a GPU; records: `search_clock`).",
    "*flags*: ⚠ degenerate = a trainable row whose mean lies inside the `random` floor's 95% interval (with its median",
    "best epoch); ⏱ cap bound = the search cap (`timeout_s`) stopped the search before the trial budget (an unequal comparison).",
    "",
]


MD_HEAD = ("rank", "strategy", "family", "mean ± std", "95% CI", "Δ vs best unimodal [95% CI]", "p raw", "p Holm",
           "beats best unimodal", "p vs logit_mean", "R×K", "trials", "search s", "train samples/s", "infer samples/s",
           "params", "flags")
MD_ALIGN = ("---:", "---", "---", "---", "---", "---", "---", "---", ":---:", "---", "---:", "---", "---:", "---:", "---:",
            "---:", "---")
MD_VS_UNIMODAL = range(5, 10)  # the comparisons with the best unimodal baseline and logit_mean: not a retrieval task's


def _md_cells(g: pd.DataFrame, retrieval: bool) -> list[list[str]]:
    """The Markdown main table's cells of a task's rows, in `MD_HEAD` order. A failed row says so in the beats
    column, and in flags on a retrieval task (which has no beats column)."""
    digits, out = mean_digits(retrieval), []
    for _, r in g.iterrows():
        beats = {True: "✅ yes", False: "❌ no"}.get(r.beats_best_unimodal, "")
        flags = row_flags(r)
        if r.status != "ok":
            beats = "failed"
            flags = "failed" + (f"; {flags}" if flags else "") if retrieval else flags
        rank = "–" if np.isnan(r["rank"]) else str(int(r["rank"]))
        ci = (f"± {_fmt(r.ci95, digits)}" if np.isnan(r.ci95_low)
              else f"[{_fmt(r.ci95_low, digits)}, {_fmt(r.ci95_high, digits)}]")
        k = max(1, r.n_seeds // max(1, r.n_replicates))
        out.append([rank, f"`{r.strategy}`", r.family, f"{_fmt(r['mean'], digits)} ± {_fmt(r['std'], digits)}", ci,
                    _delta_cell(r), _p_cell(r.p_vs_best_unimodal, r.test_note), _p_cell(r.p_adj_vs_best_unimodal), beats,
                    _p_cell(r.p_vs_late_fusion), f"{max(1, r.n_replicates)}×{k}", trials_text(r),
                    _fmt(r.search_seconds, 1), _fmt(r.train_samples_per_s, 0), _fmt(r.infer_samples_per_s, 0),
                    f"{r.params_count:,}", flags])
    return out


def to_markdown(board: pd.DataFrame, title: str = "fusebench leaderboard") -> str:
    lines = [f"# {title}", ""]
    if board.empty:
        return "\n".join(lines + ["No records."]) + "\n"
    for dataset, g in board.groupby("dataset", sort=True):
        metric = next((m for m in g.metric if m), "")
        lines += [f"## {dataset} — {metric}", "", f"**Verdict.** {task_verdict(g)}", ""]
        if note := device_note(g):
            lines += [f"**Devices.** {note}", ""]
        if g.n_replicates.max() <= 1:
            lines += ["R = 1 (one search per cell): the search-replicate level is degenerate — intervals leave out "
                      "the search variance and no paired test is run.", ""]
        retrieval = is_retrieval(g)
        keep = [i for i in range(len(MD_HEAD)) if not (retrieval and i in MD_VS_UNIMODAL)]
        if retrieval:
            lines += ["A retrieval task: each re-ranker is compared with the dual encoder alone in the retrieval detail "
                      "at the end of this file; the columns against the best unimodal baseline do not apply.", ""]
        lines += ["| " + " | ".join(MD_HEAD[i] for i in keep) + " |", "|" + "|".join(MD_ALIGN[i] for i in keep) + "|"]
        lines += ["| " + " | ".join(cells[i] for i in keep) + " |" for cells in _md_cells(g, retrieval)]
        lines.append("")
    return "\n".join(lines + LEGEND)


def write_leaderboard(records: list[Record], run_dir: Path) -> pd.DataFrame:
    """leaderboard.md / .csv and the Pareto table of `run_dir`; a task the run has not finished gets statistics
    over its finished cells, marked provisional (bench/results/provisional.py), in the tables only."""
    from fusebench.reports.ranking import rank
    from fusebench.results.provisional import provisional_stats

    records = provisional_stats(records, run_dir)
    board = leaderboard(records)
    text = to_markdown(board) + "\n" + rank(board).to_markdown()  # the ranking section carries ranking_sentence()
    from fusebench.reports.retrieval import retrieval_markdown

    text += "\n" + retrieval_markdown(records)
    atomic_write_bytes(run_dir / "leaderboard.md", text.encode())
    from fusebench.reports.pareto import write_pareto

    write_pareto(records, board, run_dir)
    from fusebench.results.identity import with_identity  # run identity columns, checked by `compare`

    atomic_write_bytes(run_dir / "leaderboard.csv", with_identity(board, records, run_dir).to_csv(index=False).encode())
    return board
