"""Statistics of a task the run has not finished yet, for the report of a run in progress.

The runner attaches a task's statistics (intervals, paired tests, Holm, the best unimodal baseline chosen
on validation; bench/results/stats.py, retrieval_stats.py) once every cell of the task has run. Until
then a report of the run (`fusebench report` of a long run, the standard suite's published status) had
records without stats, and its leaderboard fell back to a t-interval over seeds (too narrow: it holds
no test-set variance), marked a fusion row "beats best unimodal" on a higher mean alone, and its
retrieval section said "no fusion re-ranker beats the dual encoder alone (… p < 0.05)" with no test
made at all.

`provisional_stats` computes those statistics in memory, over the task's *finished* cells only (every
search replicate × evaluation seed ok: `done_cells`, the runner's own test), and marks each with
`provisional`: "N of M cells done". Nothing is written to results.jsonl: the runner's statistics,
once the task is done, are the ones the records keep. What can still change is said where the
verdict is printed: the best unimodal baseline, the Holm family (it grows with every fusion cell) and
so every adjusted p.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from fusebench.results.records import Record, done_cells
from fusebench.results.retrieval_stats import retrieval_stats
from fusebench.results.stats import dataset_stats

log = logging.getLogger(__name__)


def _protocol(run_dir: Path) -> tuple[list[int], int, dict[str, list[str]]] | None:
    """(evaluation seeds, search replicates, plan) from run.json; None for a run.json without `protocol`."""
    try:
        meta = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        return None
    protocol = meta.get("protocol") if isinstance(meta, dict) else None
    if not isinstance(protocol, dict) or not isinstance(protocol.get("eval_seeds"), list):
        return None
    plan = meta.get("plan") if isinstance(meta.get("plan"), dict) else {}
    return [int(s) for s in protocol["eval_seeds"]], max(1, int(protocol.get("replicates", 1))), plan


def provisional_note(done: int, planned: int | None) -> str:
    return f"{done} of {planned} cells done" if planned else f"{done} cells done"


def provisional_stats(records: list[Record], run_dir: Path) -> list[Record]:
    """`records`, where a dataset's ok records carry no stats, with stats over its finished cells (module doc)."""
    wanted = _protocol(Path(run_dir))
    if wanted is None:
        return records
    eval_seeds, replicates, plan = wanted
    out = records
    for dataset in sorted({r.dataset for r in records if r.status == "ok"}):
        ok = [r for r in records if r.dataset == dataset and r.status == "ok"]
        if any(r.stats for r in ok):  # the runner's statistics: the task is done
            continue
        finished = {s for _, s in done_cells(ok, eval_seeds, replicates)}
        if not finished:
            continue
        mine = [r for r in ok if r.strategy in finished]
        try:
            stats: dict[str, dict[str, Any]] = (retrieval_stats(mine, run_dir, dataset) if mine[0].task == "retrieval"
                                                else dataset_stats(mine, run_dir))
        except Exception as exc:  # a report without intervals, never no report
            log.warning("%s: no provisional statistics (%s: %s)", dataset, type(exc).__name__, exc)
            continue
        note = provisional_note(len(finished), len(plan.get(dataset) or []) or None)
        out = [dataclasses.replace(r, stats={**stats[r.strategy], "provisional": note})
               if r.dataset == dataset and r.status == "ok" and r.strategy in stats else r for r in out]
    return out
