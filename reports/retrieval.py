"""The retrieval section of the leaderboard: R@1/5/10 of both directions, median ranks, rsum with its
interval, and whether each fusion re-ranker beats the dual encoder alone (from the records' stats,
computed by bench/results/retrieval_stats.py). Reads records only."""

from __future__ import annotations

import numpy as np
import pandas as pd

from fusebench.reports.verdicts import DUAL_ENCODER, fmt_p, fmt_trials, provisional_sentence, retrieval_sentence
from fusebench.results.records import Record

COLUMNS = ("i2t_r1", "i2t_r5", "i2t_r10", "i2t_medr", "t2i_r1", "t2i_r5", "t2i_r10", "t2i_medr")
BASE = DUAL_ENCODER


def _by_strategy(records: list[Record], dataset: str) -> dict[str, list[Record]]:
    out: dict[str, list[Record]] = {}
    for r in records:
        if r.dataset == dataset and r.status == "ok":
            out.setdefault(r.strategy, []).append(r)
    return out


def search_budget(records: list[Record]) -> str:
    """The cell's trials as the main leaderboard prints them: completed/budgeted (pruned, failed),
    each a per-search figure (repeated on every seed's record) summed over the search replicates."""
    first = {r.replicate: r for r in reversed(records)}.values()  # one record per replicate
    total = {f: float(sum(getattr(r, f) or 0 for r in first))
             for f in ("n_trials_complete", "n_trials_budget", "n_trials_pruned", "n_trials_failed")}
    if not total["n_trials_complete"] + total["n_trials_pruned"] + total["n_trials_failed"]:
        total["n_trials_complete"] = float(sum(r.n_trials for r in first))  # records from before the counts
    return fmt_trials(total["n_trials_complete"], total["n_trials_budget"], total["n_trials_pruned"],
                      total["n_trials_failed"])


def retrieval_verdict(records: list[Record], dataset: str) -> str:
    """One sentence: which re-rankers beat the dual encoder alone (mean higher and p < 0.05); the words of
    `verdicts.retrieval_sentence`, which the task's verdict in the leaderboard and the report also says."""
    cells = _by_strategy(records, dataset)  # the columns retrieval_sentence reads of leaderboard(): no import cycle
    rows = pd.DataFrame([{"strategy": s, "status": "ok", "mean": float(np.mean([r.main_metric for r in rs])),
                          "delta_vs_dual_encoder": rs[0].stats.get("delta_vs_dual_encoder"),
                          "p_vs_dual_encoder": rs[0].stats.get("p_vs_dual_encoder", np.nan),
                          "beats_dual_encoder": rs[0].stats.get("beats_dual_encoder")} for s, rs in cells.items()],
                        columns=["strategy", "status", "mean", "delta_vs_dual_encoder", "p_vs_dual_encoder",
                                 "beats_dual_encoder"])
    note = next((rs[0].stats["provisional"] for rs in cells.values() if rs[0].stats.get("provisional")), "")
    ahead = f"{provisional_sentence(note, compared=False, retrieval=True)} " if note else ""
    return f"{ahead}{dataset}: {retrieval_sentence(rows)}"


HEADER = ("strategy", "rsum (mean ± std)", "95% CI", "Δ vs dual encoder", "p", "beats dual encoder", *COLUMNS, "R×K",
          "trials", "search s", "train samples/s", "queries/s")
NOTE = ("R@k in percent; medr = median rank of the first correct item; rsum = R@1+R@5+R@10 of both "
        "directions. Re-rankers re-score the dual encoder's top-k (params.rerank_k); p: paired hierarchical "
        "bootstrap (search replicates, seeds, then images) against the dual encoder alone. R×K: search "
        "replicates × evaluation seeds. trials: completed/budgeted optuna trials summed over the search "
        "replicates (pruned, failed), as in the main table; search s: their search seconds (CPU on a CPU "
        "run, wall on a GPU). "
        "train samples/s: the trained model's training pairs per second; "
        "queries/s: test queries (images + captions) ranked per second by the whole pipeline "
        "(embedding, top-k, re-scoring). Bands: docs/retrieval.md.")


def retrieval_rows(records: list[Record], dataset: str) -> list[tuple[str, ...]]:
    """The detail table of one retrieval task, a tuple of cells (as HEADER) per strategy, best rsum first;
    the Markdown leaderboard and the HTML report render the same cells."""
    cells = _by_strategy(records, dataset)
    rows = []
    for s in sorted(cells, key=lambda s: -float(np.mean([r.main_metric for r in cells[s]]))):
        rs, st = cells[s], cells[s][0].stats
        ci = f"[{st['ci95_low']:.1f}, {st['ci95_high']:.1f}]" if "ci95_low" in st else "–"
        delta = f"{st['delta_vs_dual_encoder']:+.1f}" if st.get("delta_vs_dual_encoder") is not None else "–"
        p = fmt_p(st["p_vs_dual_encoder"]) if st.get("p_vs_dual_encoder") is not None else "–"
        beats = "–" if s == BASE or st.get("p_vs_dual_encoder") is None else ("yes" if st.get("beats_dual_encoder") else "no")
        vals = [f"{np.mean([r.metrics.get(c, np.nan) for r in rs]):.1f}" for c in COLUMNS]
        main = [r.main_metric for r in rs]
        std = np.std(main, ddof=1) if len(main) > 1 else 0.0
        tp = next((r.throughput for r in rs if r.throughput is not None), None)
        speed = (f"{tp.train_samples_per_s:,.0f}", f"{tp.infer_samples_per_s:,.0f}") if tp else ("–", "–")
        units = f"{len({r.replicate for r in rs})}×{len({r.seed for r in rs})}"
        search_s = sum({r.replicate: r.search_seconds for r in rs}.values())
        rows.append((s, f"{np.mean(main):.1f} ± {std:.1f}", ci, delta, p, beats, *vals, units, search_budget(rs),
                     f"{search_s:.1f}", *speed))
    return rows


def retrieval_datasets(records: list[Record]) -> list[str]:
    return sorted({r.dataset for r in records if r.task == "retrieval"})


def retrieval_markdown(records: list[Record]) -> str:
    """Markdown tables of every retrieval dataset in `records` ('' when there is none)."""
    parts = []
    for ds in retrieval_datasets(records):
        lines = [f"## {ds} — retrieval detail", "", "| " + " | ".join(HEADER) + " |",
                 "|---|---|---|---:|---:|:---:|" + "---:|" * len(COLUMNS) + "---:|---|---:|---:|---:|"]
        lines += [f"| `{row[0]}` | " + " | ".join(row[1:]) + " |" for row in retrieval_rows(records, ds)]
        lines += ["", retrieval_verdict(records, ds), "", NOTE, ""]
        parts.append("\n".join(lines))
    return "\n".join(parts)
