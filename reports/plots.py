"""Matplotlib figures of a run: quality vs throughput (Pareto), per-family bars, optimisation
history, robustness curves and the critical-difference diagram. Each returns the PNG path."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import pandas as pd

from fusebench.reports.ranking import Ranking
from fusebench.reports.verdicts import is_floor, measured_devices

# Okabe–Ito colours (distinguishable with the common colour-vision deficiencies) plus a marker per family,
# so that a family reads by shape as well as by colour.
FAMILY_COLORS = {"early": "#0072B2", "mid": "#009E73", "late": "#D55E00", "unimodal": "#555555", "baseline": "#E69F00"}
FAMILY_MARKERS = {"early": "o", "mid": "s", "late": "^", "unimodal": "D", "baseline": "X"}
DPI = 220  # 2× a 110-dpi layout: sharp on high-density screens; the HTML shows each PNG at half its pixel size


def pareto_front(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Boolean mask of points not dominated by any other (higher is better on both axes)."""
    front = np.ones(len(x), dtype=bool)
    for i in range(len(x)):
        dominated = (x >= x[i]) & (y >= y[i]) & ((x > x[i]) | (y > y[i]))
        front[i] = not dominated.any()
    return front


def device_pareto_front(x: np.ndarray, y: np.ndarray, devices: Sequence[str]) -> np.ndarray:
    """`pareto_front` within each device's rows: a task resumed on another machine has rows whose samples/s
    were measured on two devices, and a row must not leave the front because another card is faster.
    With fewer than two devices named (`""`: none recorded, as `verdicts.device_note` counts them) it is
    the one front of all rows; with two or more, a row of no device or of several (`"A; B"`, seeds
    stored before devices were checked) has no device to be placed on and stays off every front."""
    named = measured_devices(devices)
    if len(named) < 2:
        return pareto_front(x, y)
    where = np.asarray([str(d) for d in devices], dtype=object)
    front = np.zeros(len(x), dtype=bool)
    for d in named:
        idx = np.flatnonzero(where == d)
        front[idx] = pareto_front(x[idx], y[idx])
    return front


def row_devices(g: pd.DataFrame) -> list[str]:
    """Each board row's device (`""` where none was recorded, or a CSV read it back as NaN)."""
    col = g["device"] if "device" in g else pd.Series([""] * len(g), index=g.index)
    return [d if isinstance(d, str) else "" for d in col]


def _place_numbers(ax: plt.Axes, labels: list[str], x: np.ndarray, y: np.ndarray) -> None:
    """Put a short label (a rank number) next to each point, trying 8 directions at growing
    distances (in pixels) until its box clears every point and every label already placed."""
    fig = ax.figure
    fig.canvas.draw()
    pts = ax.transData.transform(np.column_stack([x, y]))
    r_pt = 5.0
    blocked = [(px - r_pt, py - r_pt, px + r_pt, py + r_pt) for px, py in pts]
    dirs = [(1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (-1, 1), (1, -1), (-1, -1)]
    dpi_scale = fig.dpi / 72.0
    for i in np.argsort(-y):
        px, py = pts[i]
        w, h = (6.5 * len(labels[i]) + 2) * dpi_scale, 10 * dpi_scale
        chosen = None
        for dist in (7, 13, 20, 28, 38, 50):
            for dx, dy in dirs:
                cx, cy = px + dx * dist * dpi_scale, py + dy * dist * dpi_scale
                box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
                if not any(box[0] < q[2] and q[0] < box[2] and box[1] < q[3] and q[1] < box[3] for q in blocked):
                    chosen = (cx, cy, box, dist)
                    break
            if chosen:
                break
        if chosen is None:
            cx, cy = px + 7 * dpi_scale, py
            chosen = (cx, cy, (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), 7)
        cx, cy, box, dist = chosen
        blocked.append(box)
        ax.annotate(labels[i], (x[i], y[i]), xytext=((cx - px) / dpi_scale, (cy - py) / dpi_scale),
                    textcoords="offset points", ha="center", va="center", fontsize=8,
                    arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "#777"} if dist > 13 else None)


def label_boxes(fig: plt.Figure) -> list[dict]:
    """Every text the renderer actually draws (titles, axis and tick labels, annotations, legend and key
    entries; not the tick labels matplotlib keeps for ticks outside the view) with its box in display
    pixels, recorded while the figure is drawn."""
    drawn: list[matplotlib.text.Text] = []
    original = matplotlib.text.Text.draw

    def record(self: matplotlib.text.Text, renderer: object) -> None:
        original(self, renderer)
        if self.get_visible() and self.get_text().strip():
            drawn.append(self)

    matplotlib.text.Text.draw = record
    try:
        fig.canvas.draw()
    finally:
        matplotlib.text.Text.draw = original
    renderer = fig.canvas.get_renderer()
    boxes = []
    for t in drawn:
        b = t.get_window_extent(renderer)
        if b.width > 0 and b.height > 0:
            boxes.append({"text": t.get_text(), "x0": b.x0, "y0": b.y0, "x1": b.x1, "y1": b.y1})
    return boxes


def overlapping(boxes: list[dict], tol: float = 0.5) -> list[tuple[str, str]]:
    """Pairs of labels whose boxes intersect by more than `tol` pixels in both directions."""
    out = []
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            if min(a["x1"], b["x1"]) - max(a["x0"], b["x0"]) > tol and min(a["y1"], b["y1"]) - max(a["y0"], b["y0"]) > tol:
                out.append((a["text"], b["text"]))
    return out


def _save(fig: plt.Figure, path: Path, tight: bool = True) -> Path:
    """PNG at DPI, plus `<name>.labels.json`: the label boxes as drawn (the browser test asserts none overlap)."""
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    if tight:
        fig.tight_layout()
    boxes = label_boxes(fig)
    fig.savefig(path, dpi=DPI, bbox_inches="tight", pad_inches=0.08)
    plt.close(fig)
    compact_png(path)
    path.with_suffix(".labels.json").write_text(json.dumps(boxes))
    return path


def compact_png(path: Path) -> None:
    """Re-save an opaque 8-bit RGB(A) PNG (what matplotlib writes) with a 256-colour palette (no dithering):
    about 3× smaller, which the HTML report (it embeds every plot) and a published run's history feel. The
    plots are flat colours and their anti-aliased edges: on the published plots the palette shifts no
    channel by more than 18/255 (mean under 0.6/255; tests/test_plots.py). Any other PNG (transparent,
    grey, 16-bit, already a palette) is left as it is, and so is one the palette would not make smaller;
    the new file replaces the old atomically."""
    import io

    from PIL import Image

    from fusebench.core.io import atomic_write_bytes

    with Image.open(path) as image:
        image.load()
    if image.mode not in ("RGB", "RGBA") or "transparency" in image.info:
        return
    if image.mode == "RGBA" and image.getextrema()[3][0] < 255:
        return
    buffer = io.BytesIO()
    palette = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MAXCOVERAGE, dither=Image.Dither.NONE)
    palette.save(buffer, format="PNG", optimize=True)
    if buffer.tell() < path.stat().st_size:
        atomic_write_bytes(path, buffer.getvalue())


def _ci_err(g: pd.DataFrame) -> list[np.ndarray]:
    """[lower, upper] error-bar lengths: the bootstrap CI where the board has it, else the
    t-interval half-width over seeds (`ci95`), else none."""
    mean = g["mean"].to_numpy(float)
    half = g["ci95"].to_numpy(float) if "ci95" in g else np.full(len(g), np.nan)
    lo = g["ci95_low"].to_numpy(float) if "ci95_low" in g else np.full(len(g), np.nan)
    hi = g["ci95_high"].to_numpy(float) if "ci95_high" in g else np.full(len(g), np.nan)
    lo = np.where(np.isfinite(lo), lo, mean - np.nan_to_num(half))
    hi = np.where(np.isfinite(hi), hi, mean + np.nan_to_num(half))
    return [np.clip(mean - lo, 0, None), np.clip(hi - mean, 0, None)]


def quality_vs_throughput(board: pd.DataFrame, dataset: str, out: Path) -> Path | None:
    """Mean main metric (95% CI) against inference samples/s (log). Points carry their leaderboard rank;
    the key on the right names them (★ = on the Pareto front, which the dashed line joins)."""
    g = board[(board.dataset == dataset) & (board.status == "ok")]
    g = g[~np.array([is_floor(s, f) for s, f in zip(g.strategy, g.family, strict=True)], dtype=bool)]  # dual encoder stays
    g = g[np.isfinite(g.infer_samples_per_s.astype(float)) & np.isfinite(g["mean"].astype(float))]
    if g.empty:
        return None
    g = g.sort_values("mean", ascending=False)
    x, y = g.infer_samples_per_s.to_numpy(float), g["mean"].to_numpy(float)
    devices = row_devices(g)
    names = measured_devices(devices)
    tags = {d: f"D{i + 1}" for i, d in enumerate(names)} if len(names) > 1 else {}
    names = names if tags else [""]  # one device or none: one front of all rows
    front = device_pareto_front(x, y, devices)
    ranks = [str(int(r)) if "rank" in g and np.isfinite(r) else str(i + 1)
             for i, r in enumerate(g["rank"] if "rank" in g else range(len(g)))]
    fig = plt.figure(figsize=(9.5, 5.4 + 0.1 * max(0, len(g) - 18)))
    ax = fig.add_axes((0.09, 0.2, 0.62, 0.72))
    for fam, sub in g.groupby("family"):
        ax.errorbar(sub.infer_samples_per_s, sub["mean"], yerr=_ci_err(sub), fmt=FAMILY_MARKERS.get(fam, "o"), ms=5,
                    color=FAMILY_COLORS.get(fam, "k"), label=fam, capsize=2, alpha=0.85, elinewidth=0.8)
    for i, d in enumerate(names):  # one front per device (row_devices): samples/s compare within a device only
        on = front & (np.asarray(devices, dtype=object) == d) if tags else front
        order = np.argsort(x[on])
        ax.plot(x[on][order], y[on][order], ("--", ":", "-.")[i % 3], color="black", lw=1,
                label=f"Pareto front {tags[d]}" if tags else "Pareto front")
    ax.scatter(x[front], y[front], s=90, facecolors="none", edgecolors="black", lw=1, zorder=3)
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # minor labels collided with the y tick labels
    ax.tick_params(axis="x", pad=7)
    ax.margins(x=0.12, y=0.1)
    _place_numbers(ax, ranks, x, y)
    ax.set_xlabel("inference throughput (samples/s, log scale)")
    ax.set_ylabel(f"test {g.metric.iloc[0]} (mean over seeds, 95% CI)")
    ax.set_title(f"{dataset}: quality vs throughput", fontsize=11)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=6, frameon=False)  # outside the data
    if tags:  # under the legend: which device each tag is, and that the fronts do not compare them
        fig.text(0.09, 0.015, "; ".join(f"{t} = {d}" for d, t in tags.items())
                 + ": samples/s compare rows of one device; ★ = on its device's front", fontsize=7, color="#444")
    fs = 8 if len(g) <= 22 else 6.5
    step = min(0.045, 0.88 / max(len(g), 1))
    fig.text(0.735, 0.93, "# = leaderboard rank, ★ = Pareto front", fontsize=7.5, color="#444")
    for j, (rk, name, fam, on, dev) in enumerate(zip(ranks, g.strategy, g.family, front, devices, strict=True)):
        tag = f"  [{tags.get(dev) or ('several' if dev else 'no device')}]" if tags else ""
        fig.text(0.735, 0.89 - j * step, f"{rk:>3}  {name}{tag}{'  ★' if on else ''}", fontsize=fs,
                 color=FAMILY_COLORS.get(fam, "k"), fontweight="bold" if on else "normal", family="DejaVu Sans")
    return _save(fig, out / f"{dataset}-pareto.png", tight=False)


FAMILY_ORDER = ("early", "mid", "late", "unimodal", "baseline")


def family_bars(board: pd.DataFrame, dataset: str, out: Path) -> Path | None:
    """Strategies grouped by family (best first within a family) with 95% CI error bars; the dotted
    line is the best unimodal baseline."""
    g = board[(board.dataset == dataset) & (board.status == "ok")].copy()
    g = g[np.isfinite(g["mean"].astype(float))]
    if g.empty:
        return None
    order = {f: i for i, f in enumerate(FAMILY_ORDER)}
    g["_fam"] = g.family.map(lambda f: order.get(f, len(order)))
    g = g.sort_values(["_fam", "mean"], ascending=[True, False])
    pos, y, fam_prev = [], 0.0, None
    for fam in g.family:
        if fam_prev is not None and fam != fam_prev:
            y += 0.6  # a gap between families
        pos.append(y)
        y += 1.0
        fam_prev = fam
    pos = np.asarray(pos)
    fig, ax = plt.subplots(figsize=(8, 0.34 * len(g) + 1.6))
    ax.barh(pos, g["mean"], xerr=_ci_err(g), capsize=3, height=0.8,
            color=[FAMILY_COLORS.get(f, "k") for f in g.family], error_kw={"lw": 1, "ecolor": "#222"})
    ax.set_yticks(pos, list(g.strategy), fontsize=8)
    ax.invert_yaxis()
    uni = g[g.family == "unimodal"]
    if not uni.empty:
        ax.axvline(uni["mean"].max(), color="#555", ls=":", lw=1.2, label="best unimodal")
    ax.set_xlabel(f"test {g.metric.iloc[0]} (mean over seeds, error bar: 95% CI)")
    ax.set_title(f"{dataset}: strategies by family")
    present = [f for f in FAMILY_ORDER if f in set(g.family)]
    handles = [plt.Rectangle((0, 0), 1, 1, color=FAMILY_COLORS[f]) for f in present]
    extra = ax.get_legend_handles_labels()
    ax.legend(handles + extra[0], present + extra[1], fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0),
              frameon=False)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, out / f"{dataset}-families.png")


_MARKERS = "osD^v<>ph*X"


def _family_panels(series: dict[str, pd.Series], families: dict[str, str] | None, title: str, xlabel: str,
                   ylabel: str, path: Path, best_so_far: bool) -> Path | None:
    """One panel per family (so that no panel has more than a handful of lines), shared y axis.
    series: name → values indexed by x (trial number or noise σ)."""
    families = families or {}
    groups: dict[str, list[str]] = {}
    for name in sorted(series):
        if not is_floor(name, families.get(name, "")):  # sanity floors (majority/random) stay in the tables
            groups.setdefault(families.get(name, "other"), []).append(name)
    if not groups:
        return None
    fams = sorted(groups, key=lambda f: FAMILY_ORDER.index(f) if f in FAMILY_ORDER else len(FAMILY_ORDER))
    ncols, nrows = 1, len(fams)  # one column: each panel's legend sits outside it, on the right
    fig, axes = plt.subplots(nrows, ncols, figsize=(8, 2.3 * nrows + 0.7), sharey=True, squeeze=False)
    cmap = plt.get_cmap("tab10")
    for ax, fam in zip(axes.flat, fams):
        for i, name in enumerate(groups[fam]):
            sr = series[name].dropna()
            xs, vals = sr.index.to_numpy(float), sr.to_numpy(float)
            color, marker = cmap(i % 10), _MARKERS[i % len(_MARKERS)]
            if best_so_far:
                ax.scatter(xs, vals, color=color, marker=marker, s=14, alpha=0.35)
                ax.step(xs, np.maximum.accumulate(vals), where="post", color=color, lw=1.6, label=name)
            else:
                ax.plot(xs, vals, color=color, marker=marker, ms=4, lw=1.4, label=name)
        ax.set_title(fam, fontsize=9, color=FAMILY_COLORS.get(fam, "k"), fontweight="bold")
        ax.tick_params(axis="x", pad=7)  # the first x label cleared of the lowest y label in the corner
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        if best_so_far:
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    for ax in axes.flat[len(fams):]:
        ax.axis("off")
    for j, ax in enumerate(axes.flat[:len(fams)]):
        if j + ncols >= len(fams):  # nothing below it
            ax.set_xlabel(xlabel, fontsize=8)
            ax.xaxis.set_tick_params(labelbottom=True)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel, fontsize=8)
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def optimisation_history(histories: dict[str, list[float]], dataset: str, metric: str, out: Path,
                         families: dict[str, str] | None = None) -> Path | None:
    """histories: strategy → validation value of each finished trial, in trial order. Dots: each
    trial; line: the best so far; one panel per family."""
    series = {k: pd.Series(v, index=np.arange(1, len(v) + 1), dtype=float) for k, v in histories.items() if v}
    if not series:
        return None
    return _family_panels(series, families, f"{dataset}: optuna optimisation history (line: best so far, dots: each trial)",
                          "trial (finished, in order)", f"validation {metric}", out / f"{dataset}-history.png", True)


def robustness_curves(curves: pd.DataFrame, dataset: str, metric: str, out: Path,
                      families: dict[str, str] | None = None) -> Path | None:
    """curves: rows strategy, columns noise σ (0 = clean), values mean test metric; one panel per family."""
    if curves.empty:
        return None
    series = {str(name): pd.Series(row.to_numpy(float), index=row.index.astype(float)) for name, row in curves.iterrows()}
    return _family_panels(series, families, f"{dataset}: robustness to feature noise",
                          "Gaussian noise σ added to every standardised feature", f"test {metric} (mean over seeds)",
                          out / f"{dataset}-robustness.png", False)


def critical_difference(ranking: Ranking, out: Path) -> Path | None:
    """A Demšar critical-difference diagram: the average-rank axis on top, each strategy hung from
    its rank (best half on the left, the rest on the right), thick bars joining strategies whose
    ranks differ by less than the Nemenyi CD, and the CD drawn as a scale bar. Drawn only when the
    Friedman test rejects (Demšar 2006): otherwise there is no post-hoc comparison to show (None)."""
    if ranking.average_rank.empty or ranking.critical_difference is None:
        return None
    avg = ranking.average_rank
    names, ranks = list(avg.index), avg.to_numpy(float)
    k = len(names)
    lo, hi = 1.0, float(max(k, np.ceil(ranks.max())))
    half = (k + 1) // 2
    cliques = ranking.cliques()
    rows = max(half, k - half)
    height = 1.6 + 0.28 * rows + 0.14 * len(cliques)
    fig, ax = plt.subplots(figsize=(9, max(2.8, height)))
    ax.set_xlim(lo - (hi - lo) * 0.45, hi + (hi - lo) * 0.45)
    top = 0.0
    ax.set_ylim(-(1.0 + 0.5 * rows + 0.25 * len(cliques)), 1.5)
    ax.axis("off")
    ax.hlines(top, lo, hi, color="black", lw=1)
    for t in np.arange(lo, hi + 1e-9, 0.5):
        major = float(t).is_integer()
        ax.vlines(t, top, top + (0.18 if major else 0.09), color="black", lw=1)
        if major:
            ax.text(t, top + 0.28, f"{int(t)}", ha="center", va="bottom", fontsize=9)
    ax.text(hi + (hi - lo) * 0.05, top + 0.05, "average rank\n(1 = best)", ha="left", va="bottom", fontsize=8,
            color="#444")
    if ranking.critical_difference:
        cd = ranking.critical_difference
        ax.hlines(top + 0.95, lo, lo + cd, color="#b22222", lw=2)
        ax.vlines([lo, lo + cd], top + 0.85, top + 1.05, color="#b22222", lw=2)
        ax.text(lo + cd + (hi - lo) * 0.02, top + 0.95, f"critical difference CD = {cd:.2f}", ha="left", va="center",
                fontsize=9, color="#b22222")
    clique_y0 = -0.25
    for j, group in enumerate(cliques):
        gy = clique_y0 - 0.25 * j
        ax.hlines(gy, avg[group[0]] - 0.03, avg[group[-1]] + 0.03, color="black", lw=3.5, alpha=0.8)
    label_y0 = clique_y0 - 0.25 * len(cliques) - 0.3
    for i, (name, r) in enumerate(zip(names, ranks)):
        left = i < half
        row = i if left else k - 1 - i
        yy = label_y0 - 0.5 * row
        xend = lo - (hi - lo) * 0.05 if left else hi + (hi - lo) * 0.05
        ax.plot([r, r, xend], [top, yy, yy], color="#333", lw=0.9)
        ax.text(xend + (-0.02 if left else 0.02) * (hi - lo), yy, f"{name} ({r:.2f})", ha="right" if left else "left",
                va="center", fontsize=9)
    title = f"Critical-difference diagram: average rank over {ranking.n_tasks} task(s)"
    if ranking.friedman_p is not None:
        title += (f"\nFriedman p = {ranking.friedman_p:.3g}; thick bars join strategies that are not significantly "
                  "different (Nemenyi, α = 0.05)")
    ax.set_title(title, fontsize=9)
    return _save(fig, out / "critical-difference.png")
