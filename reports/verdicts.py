"""The leaderboard's words: one verdict per task and the overall-ranking sentence, as plain functions
returning strings so the Markdown leaderboard and the HTML report say exactly the same thing.

`task_verdict(rows)` takes one task's rows of `reports.leaderboard.leaderboard()` (columns `strategy`,
`family`, `mean`, `beats_best_unimodal`, `delta_vs_best_unimodal`, `delta_ci95_low/high`,
`p_adj_vs_best_unimodal`, `best_unimodal`, `n_replicates`, `degenerate`, `best_epoch`; on a retrieval
task `task`, `delta_vs_dual_encoder`, `p_vs_dual_encoder`, `beats_dual_encoder`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import SupportsFloat

import numpy as np
import pandas as pd

from fusebench.reports.ranking import DUAL_ENCODER, Ranking

FUSION_FAMILIES = ("early", "mid", "late")


def is_floor(strategy: str, family: str) -> bool:
    """A sanity floor (`majority`, `random`): family `baseline`, nothing learned, left out of the Pareto fronts.
    The dual encoder is a baseline too, but a trained model, and the one a retrieval task's re-rankers must
    beat: it stays on its task's front."""
    return family == "baseline" and strategy != DUAL_ENCODER


def fmt_p(p: SupportsFloat | None) -> str:
    """A p-value as printed everywhere: `<0.001`, else three significant digits; '' when absent."""
    if p is None or (isinstance(p, float) and np.isnan(p)):
        return ""
    return "<0.001" if float(p) < 0.001 else f"{float(p):.3g}"


def p_words(p: SupportsFloat | None) -> str:
    """A p-value in a sentence: `p < 0.001` or `p = 0.0234`."""
    text = fmt_p(p)
    return f"p < {text[1:]}" if text.startswith("<") else f"p = {text or '–'}"


def fmt_trials(complete: float, budget: float, pruned: float = float("nan"), failed: float = float("nan")) -> str:
    """A search budget as every table prints it: `complete/budget (p pruned, f failed)`; '–' when not
    searched (a fixed baseline); pruned/failed only when recorded (finite)."""
    def count(x: float) -> str:
        return "–" if x is None or not np.isfinite(x) else f"{int(x)}"

    if budget is None or not np.isfinite(budget) or budget == 0:
        return "–"
    extra = [f"{count(v)} {word}" for v, word in ((pruned, "pruned"), (failed, "failed")) if v is not None and np.isfinite(v)]
    return f"{count(complete)}/{count(budget)}" + (f" ({', '.join(extra)})" if extra else "")


def _delta(r: pd.Series) -> str:
    d, lo, hi = r.get("delta_vs_best_unimodal"), r.get("delta_ci95_low"), r.get("delta_ci95_high")
    if d is None or not np.isfinite(d):
        return "–"
    ci = f" [{lo:+.4f}, {hi:+.4f}]" if lo is not None and np.isfinite(lo) else ""
    return f"{d:+.4f}{ci}"


def is_retrieval(g: pd.DataFrame) -> bool:
    """Whether a task's board rows are a retrieval task's: compared with the dual encoder, not a unimodal baseline."""
    return "retrieval" in set(g.get("task", []))


def mean_digits(retrieval: bool) -> int:
    """Decimals of a task's mean: rsum (0–600, a sum of recalls in percent) to 0.1, the other metrics (0–1) to 1e-4."""
    return 1 if retrieval else 4


def provisional_sentence(note: str, compared: bool, retrieval: bool = False) -> str:
    """What a task's statistics over its finished cells only may not say yet (bench/results/provisional.py);
    `compared`: the task has a fusion-vs-unimodal family, whose baseline and Holm adjustment can change;
    `retrieval`: each re-ranker's test is paired with the dual encoder alone, so a finished one stands."""
    if not note:
        return ""
    if retrieval:
        return (f"Provisional ({note}): the statistics are over the finished cells only; each re-ranker's test is "
                "paired with the dual encoder alone, so it stands as the other cells finish.")
    return (f"Provisional ({note}): the statistics are over the finished cells only"
            + ("; the best unimodal baseline, the Holm family and with it every adjusted p can change as the other "
               "cells finish." if compared else "."))


def retrieval_sentence(rows: pd.DataFrame) -> str:
    """Whether each fusion re-ranker of a retrieval task beats the dual encoder alone: a higher mean rsum and
    p < 0.05 of the paired hierarchical bootstrap (bench/results/retrieval_stats.py). Counts only the
    re-rankers whose records carry that test: a test not made is never reported as a "no"."""
    ok = rows[rows.status == "ok"]
    rerankers = ok[ok.strategy != DUAL_ENCODER]
    if DUAL_ENCODER not in set(ok.strategy) or rerankers.empty:
        return "No dual encoder and re-ranker pair to compare on this task."
    p = rerankers.get("p_vs_dual_encoder", pd.Series(np.nan, index=rerankers.index)).astype(float)
    tested = rerankers[p.notna()]
    if tested.empty:
        return (f"Re-rankers not tested against the dual encoder alone ({len(rerankers)} re-ranker(s); these records "
                "carry no statistics).")
    winners = tested[tested.beats_dual_encoder.eq(True)].sort_values("mean", ascending=False)
    if winners.empty:
        best = tested.sort_values("mean", ascending=False).iloc[0]
        return (f"No fusion re-ranker beats the dual encoder alone ({len(tested)} tested; paired bootstrap over search "
                f"replicates, seeds and images, p < 0.05). Best re-ranker `{best.strategy}`: "
                f"Δ = {best.delta_vs_dual_encoder:+.1f} rsum, {p_words(best.p_vs_dual_encoder)}.")
    return (f"{len(winners)} of {len(tested)} fusion re-rankers beat the dual encoder alone (p < 0.05): "
            + ", ".join(f"`{w.strategy}` (Δ = {w.delta_vs_dual_encoder:+.1f} rsum, {p_words(w.p_vs_dual_encoder)})"
                        for _, w in winners.iterrows()) + ".")


def task_verdict(rows: pd.DataFrame) -> str:
    """The verdict of one task, in words: the best strategy, whether (and by how much) fusion beats the best
    unimodal baseline with the Holm-adjusted p, or plainly that none does; degenerate rows named."""
    ok = rows[rows.status == "ok"].sort_values("mean", ascending=False)
    if ok.empty:
        return "No strategy finished on this task."
    top = ok.iloc[0]
    uni = ok[ok.family == "unimodal"]
    fusion = ok[ok.family.isin(FUSION_FAMILIES)]
    note = next((n for n in ok.get("provisional", []) if isinstance(n, str) and n), "")
    retrieval = is_retrieval(ok)
    out = [provisional_sentence(note, not uni.empty and not fusion.empty, retrieval)] if note else []
    out.append(f"Best strategy: `{top.strategy}` ({top.family}, mean {top['mean']:.{mean_digits(retrieval)}f}).")
    if retrieval:  # its comparison is with the dual encoder, not with a unimodal baseline
        return " ".join([*out, retrieval_sentence(rows)])
    best_uni = next((b for b in ok.get("best_unimodal", pd.Series(dtype=object)) if isinstance(b, str) and b), None)
    chosen = "chosen on validation"
    if best_uni is None and not uni.empty:  # a run without statistics: highest test mean, said so
        best_uni, chosen = uni.iloc[0].strategy, "highest test mean; this run has no statistics"
    if uni.empty or fusion.empty or best_uni is None:
        out.append("No fusion-vs-unimodal comparison on this task (it needs both a unimodal and a fusion row).")
    else:
        winners = fusion[fusion.beats_best_unimodal.eq(True)]
        if not winners.empty:
            w = winners.iloc[0]
            out.append(f"`{w.strategy}` beats the best unimodal baseline `{best_uni}` ({chosen}): "
                       f"Δ = {_delta(w)}, Holm-adjusted p = {fmt_p(w.p_adj_vs_best_unimodal)}"
                       + (f"; {len(winners) - 1} other fusion strateg{'y' if len(winners) == 2 else 'ies'} also do."
                          if len(winners) > 1 else "."))
        elif fusion.beats_best_unimodal.isna().all() and "R=1" in " ".join(map(str, fusion.get("test_note", []))):
            f = fusion.iloc[0]
            out.append(f"Not testable with R=1 (one search per cell; the search variance cannot be estimated): the best "
                       f"fusion strategy `{f.strategy}` differs from the best unimodal baseline `{best_uni}` by "
                       f"Δ = {_delta(f)} (interval without the search variance). A claim needs ≥ 2 search replicates.")
        else:
            f = fusion.iloc[0]
            out.append(f"No fusion strategy beats the best unimodal baseline `{best_uni}` ({chosen}) on this task (best fusion "
                       f"`{f.strategy}`: Δ = {_delta(f)}, Holm-adjusted p = {fmt_p(f.p_adj_vs_best_unimodal) or '–'}).")
    degenerate = ok[ok.get("degenerate", pd.Series(False, index=ok.index)).eq(True)]
    if not degenerate.empty:
        names = ", ".join(f"`{r.strategy}`" + (f" (best epoch {int(r.best_epoch)})" if np.isfinite(r.best_epoch) else "")
                          for _, r in degenerate.iterrows())
        out.append(f"Degenerate (mean inside the `random` floor's interval, learned nothing): {names}.")
    return " ".join(out)


def ranking_sentence(ranking: Ranking) -> str:
    """What the cross-task ranking analysis allows one to say (Friedman, then Nemenyi only if it rejects)."""
    return ranking.sentence()


def measured_devices(devices: Sequence[str]) -> list[str]:
    """The single devices among the rows' (sorted): not `""`, not a joined `"A; B"` (a row whose seeds were
    measured on several devices). `device_note` and the Pareto fronts (`plots.device_pareto_front`) count by it."""
    return sorted({str(d) for d in devices if isinstance(d, str) and d and "; " not in d})


def device_note(g: pd.DataFrame) -> str:
    """A task's rows measured on more than one device (a run resumed on another machine), in words: their
    samples/s columns compare devices as much as strategies. Empty when every row with a device recorded
    was measured on one and the same device.

    Counted as the Pareto fronts count them (`measured_devices`): a row measured on several devices
    (`"A; B"`: seeds stored before devices were checked) is named apart, not under each of its devices;
    with two or more single devices it stays off every front, with fewer it is on the one front."""
    devices = list(g.get("device", pd.Series(dtype=str)))
    single = set(measured_devices(devices))
    by_device: dict[str, list[str]] = {}
    several: list[tuple[str, str]] = []  # (strategy, "A; B")
    for strategy, device in zip(g.strategy, devices, strict=False):
        if device in single:
            by_device.setdefault(device, []).append(str(strategy))
        elif isinstance(device, str) and device:  # not None, nor NaN from a board read back from CSV
            several.append((str(strategy), device))
    named = set(by_device) | {d for _, joined in several for d in joined.split("; ") if d}
    if len(named) < 2:
        return ""
    parts = "; ".join(f"`{d}` ({', '.join(f'`{s}`' for s in sorted(names))})" for d, names in sorted(by_device.items()))
    note = f"Measured on {len(named)} devices: {parts}." if parts else f"Measured on {len(named)} devices."
    if len(by_device) >= 2:
        note += " The samples/s columns compare a row with the rows of its own device only."
    if several:
        rows = ", ".join(f"`{strategy}` (`{joined}`)" for strategy, joined in sorted(several))
        note += (f" {rows} {'was' if len(several) == 1 else 'were'} measured on several "
                 "devices, whose samples/s mix them" + (": on no device's front." if len(by_device) >= 2 else "."))
    return note
