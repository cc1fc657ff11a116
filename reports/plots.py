"""Matplotlib figures of a run: quality vs throughput (Pareto), per-family bars, optimisation
history, robustness curves and the critical-difference diagram. Each returns the PNG path."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.ticker  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from reports.ranking import Ranking  # noqa: E402

FAMILY_COLORS = {"early": "#1f77b4", "mid": "#2ca02c", "late": "#d62728", "unimodal": "#7f7f7f", "baseline": "#bcbd22"}


def pareto_front(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Boolean mask of points not dominated by any other (higher is better on both axes)."""
    front = np.ones(len(x), dtype=bool)
    for i in range(len(x)):
        dominated = (x >= x[i]) & (y >= y[i]) & ((x > x[i]) | (y > y[i]))
        front[i] = not dominated.any()
    return front


def _label_without_overlap(ax: plt.Axes, names: list[str], x: np.ndarray, y: np.ndarray, bold: np.ndarray) -> None:
    """Greedy label placement: each label sits right of its point, pushed down (in pixels) until
    its box clears every label already placed."""
    fig = ax.figure
    fig.canvas.draw()
    to_px = ax.transData.transform
    placed: list[tuple[float, float, float, float]] = []
    height, char_w = 10.0, 4.6
    for i in np.argsort(-y):
        px, py = to_px((x[i], y[i]))
        width = char_w * len(names[i])
        dy = 4.0
        for _ in range(40):
            box = (px + 5, py + dy - height / 2, px + 5 + width, py + dy + height / 2)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
                break
            dy -= height
        placed.append(box)
        ax.annotate(names[i], (x[i], y[i]), xytext=(5, dy - 3), textcoords="offset points", fontsize=7,
                    fontweight="bold" if bold[i] else "normal",
                    arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "#999"} if dy < -6 else None)


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def quality_vs_throughput(board: pd.DataFrame, dataset: str, out: Path) -> Path | None:
    g = board[(board.dataset == dataset) & (board.status == "ok") & (board.family != "baseline")]
    g = g[np.isfinite(g.infer_samples_per_s.astype(float)) & np.isfinite(g["mean"].astype(float))]
    if g.empty:
        return None
    x, y = g.infer_samples_per_s.to_numpy(float), g["mean"].to_numpy(float)
    front = pareto_front(x, y)
    fig, ax = plt.subplots(figsize=(8, 5.2))
    for fam, sub in g.groupby("family"):
        lo = sub["mean"] - sub.get("ci95_low", sub["mean"]).fillna(sub["mean"])
        hi = sub.get("ci95_high", sub["mean"]).fillna(sub["mean"]) - sub["mean"]
        ax.errorbar(sub.infer_samples_per_s, sub["mean"], yerr=[lo.clip(lower=0), hi.clip(lower=0)], fmt="o",
                    color=FAMILY_COLORS.get(fam, "k"), label=fam, capsize=2, alpha=0.85)
    order = np.argsort(x[front])
    ax.plot(x[front][order], y[front][order], "--", color="black", lw=1, label="Pareto front")
    ax.set_xscale("log")
    _label_without_overlap(ax, list(g.strategy), x, y, front)
    ax.set_xlabel("inference throughput (samples/s, log scale)")
    metric = g.metric.iloc[0]
    ax.set_ylabel(f"test {metric} (mean over seeds, 95% CI)")
    ax.set_title(f"{dataset}: quality vs throughput")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, out / f"{dataset}-pareto.png")


def family_bars(board: pd.DataFrame, dataset: str, out: Path) -> Path | None:
    g = board[(board.dataset == dataset) & (board.status == "ok")].sort_values("mean")
    if g.empty:
        return None
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(g) + 1.4))
    lo = (g["mean"] - g["ci95_low"].fillna(g["mean"])).clip(lower=0) if "ci95_low" in g else None
    hi = (g["ci95_high"].fillna(g["mean"]) - g["mean"]).clip(lower=0) if "ci95_high" in g else None
    ax.barh(g.strategy, g["mean"], xerr=None if lo is None else [lo, hi], capsize=2,
            color=[FAMILY_COLORS.get(f, "k") for f in g.family])
    ax.set_xlabel(f"test {g.metric.iloc[0]} (mean over seeds, 95% CI)")
    ax.set_title(f"{dataset}: strategies by family")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in FAMILY_COLORS.values()]
    ax.legend(handles, list(FAMILY_COLORS), fontsize=8, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, out / f"{dataset}-families.png")


def optimisation_history(histories: dict[str, list[float]], dataset: str, metric: str, out: Path) -> Path | None:
    """histories: strategy → validation value of each finished trial, in trial order."""
    histories = {k: v for k, v in histories.items() if v}
    if not histories:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    cmap = plt.get_cmap("tab20")
    for i, (name, values) in enumerate(sorted(histories.items())):
        best = np.maximum.accumulate(np.asarray(values, float))
        ax.plot(range(1, len(best) + 1), best, marker="o", ms=3, color=cmap(i % 20), label=name)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("trial (finished, in order)")
    ax.set_ylabel(f"best validation {metric} so far")
    ax.set_title(f"{dataset}: optuna optimisation history")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    return _save(fig, out / f"{dataset}-history.png")


def robustness_curves(curves: pd.DataFrame, dataset: str, metric: str, out: Path) -> Path | None:
    """curves: rows strategy, columns noise σ (0 = clean), values mean test metric."""
    if curves.empty:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    cmap = plt.get_cmap("tab20")
    for i, (name, row) in enumerate(curves.iterrows()):
        ax.plot(row.index.astype(float), row.to_numpy(float), marker="o", ms=3, color=cmap(i % 20), label=name)
    ax.set_xlabel("Gaussian noise σ added to every standardised feature")
    ax.set_ylabel(f"test {metric} (mean over seeds)")
    ax.set_title(f"{dataset}: robustness to feature noise")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="best")
    return _save(fig, out / f"{dataset}-robustness.png")


def critical_difference(ranking: Ranking, out: Path) -> Path | None:
    if ranking.average_rank.empty:
        return None
    avg = ranking.average_rank
    fig, ax = plt.subplots(figsize=(8, 0.28 * len(avg) + 1.6))
    y = np.arange(len(avg))[::-1]
    ax.scatter(avg.to_numpy(), y, color="black", zorder=3)
    if ranking.critical_difference:
        best = avg.iloc[0]
        ax.axvspan(best, best + ranking.critical_difference, color="#9ecae1", alpha=0.5)
    ax.set_yticks(y, [f"{n}" for n in avg.index], fontsize=8)
    ax.set_xlabel("average rank over tasks (lower is better)")
    title = "average ranks (Nemenyi)"
    if ranking.friedman_p is not None and ranking.critical_difference:
        title += (f"\nFriedman p = {ranking.friedman_p:.3g}; shaded: within the critical difference "
                  f"({ranking.critical_difference:.2f}) of the best")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, out / "critical-difference.png")
