"""What a long run's unfinished cells would take, from a short probe run on the same machine.

`fusebench timing status` estimates a task's time left only from that task's own finished cells:
a task the sweep has not reached has no estimate. A probe answers sooner: the same tasks and splits
with a small protocol (say 5 trials, 1 search replicate, the run's K seeds), a representative
strategy or two per task. Its records carry the two rates a cell's time is made of:

- `trial_s`: search seconds per spent trial (each replicate's `search_seconds` / its `n_trials`);
- `seed_s`: in-cell seconds per evaluation record (its `phase_seconds`: the seed's fit share,
  scoring, robustness, the once-per-cell throughput timing).

A trainable cell of the run then costs R × (trials × trial_s) + R × K × seed_s, with the run's own
R, trials and K (run.json `protocol`). Which probe cell stands for which planned cell: the same
strategy if probed; else, among the probed cells of that task with the same encoder mode (frozen,
`+ft:last:2`, ...), those sharing its prefix before ':' (`rerank:`, `unimodal:`), else all of them
(never `dual_encoder`, whose search has no fusion model). Trivial baselines (`majority`, `random`:
no search, no training) count 0 s and are named.

What the estimate assumes, and the status says: per-trial cost does not depend on which params the
sampler proposes or on pruning, and the probed strategies stand for the others of their task. The
first holds poorly for a probe of one trial round: a round of `trial_batch` trials trains together
before any of them completes, so the MedianPruner (which needs 2 completed trials) prunes none of
it, while the run's later rounds are pruned. A probe of one round therefore over-estimates the search
part; on the standard suite's AV-MNIST `attention_weights` cell it measured 136 s per trial against
32–70 s in the run's own fresh replicates (which pruned 5 and 11 of 20). Read the estimate as an upper
bound, and check it against a cell both runs finished (the probe's strategy in the run itself).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from fusebench.results.records import Record, done_cells
from fusebench.run.selection import parse_selection
from fusebench.strategies.base import STRATEGIES

NO_FUSION_MODEL = "dual_encoder"
FT_MARK = "+ft:"  # a fine-tuned cell's name: <strategy>+ft:<mode> (bench/run/selection.py)


@dataclass(frozen=True)
class CellRate:
    """One finished probe cell's measured rates."""

    strategy: str
    trial_s: float  # search seconds per spent trial (0 without a search)
    seed_s: float  # in-cell seconds per evaluation record

    def cell_seconds(self, trials: int, seeds: int, replicates: int) -> float:
        return replicates * (trials * self.trial_s + seeds * self.seed_s)


def cell_rate(strategy: str, records: list[Record]) -> CellRate | None:
    """The rates of one finished probe cell; None when its records carry no in-cell seconds (records
    written before retrieval cells recorded `phase_seconds`: their evaluation time is unknown)."""
    if not all(r.phase_seconds for r in records):
        return None
    searches = {r.replicate: (r.search_seconds, r.n_trials) for r in records}
    trials = sum(n for _, n in searches.values())
    trial_s = sum(s for s, _ in searches.values()) / trials if trials else 0.0
    seed_s = statistics.fmean(sum(r.phase_seconds.values()) for r in records)
    return CellRate(strategy, trial_s, seed_s)


def probe_rates(records: list[Record], eval_seeds: list[int], replicates: int) -> dict[str, list[CellRate]]:
    """Per task, the rates of a probe run's finished cells (exactly those a resume would skip)."""
    finished = done_cells(records, eval_seeds, replicates)
    by_cell: dict[tuple[str, str], list[Record]] = {}
    for r in records:
        if r.status == "ok" and (r.dataset, r.strategy) in finished:
            by_cell.setdefault((r.dataset, r.strategy), []).append(r)
    rates: dict[str, list[CellRate]] = {}
    for (ds, strategy), rs in sorted(by_cell.items()):
        rate = cell_rate(strategy, rs)
        if rate is not None:
            rates.setdefault(ds, []).append(rate)
    return rates


def _mode(strategy: str) -> tuple[str, str]:
    """(the name without its encoder mode, the mode): `gmu+ft:last:2` → ("gmu", "last:2"); frozen → ""."""
    name, _, mode = strategy.partition(FT_MARK)
    return name, mode


def is_trivial(strategy: str) -> bool:
    base, _ = parse_selection(_mode(strategy)[0])
    return base in STRATEGIES and not STRATEGIES.get(base).trainable


def stand_ins(strategy: str, rates: list[CellRate]) -> list[CellRate]:
    """The probe cells that stand for a planned cell (see the module docstring); only cells of the
    same encoder mode (a fine-tuned cell costs far more than its frozen twin)."""
    same = [r for r in rates if r.strategy == strategy]
    if same:
        return same
    name, mode = _mode(strategy)
    peers = [(r, _mode(r.strategy)[0]) for r in rates if _mode(r.strategy)[1] == mode]
    prefix = name.partition(":")[0] if ":" in name else None
    family = [r for r, n in peers if prefix and ":" in n and n.partition(":")[0] == prefix]
    return family or [r for r, n in peers if n != NO_FUSION_MODEL]


@dataclass(frozen=True)
class TaskEstimate:
    seconds: float | None  # the listed cells' estimated seconds; None when no probe cell stands for one
    trivial: list[str]  # counted 0 s
    unmatched: list[str]  # no probe cell of this task stands for them

    def as_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "trivial": self.trivial, "unmatched": self.unmatched}


def estimate_cells(strategies: list[str], rates: list[CellRate], trials: int, seeds: int,
                   replicates: int) -> TaskEstimate:
    """Estimated seconds of `strategies` (one task's cells not done yet) at the probe's rates."""
    total, trivial, unmatched = 0.0, [], []
    for s in strategies:
        if is_trivial(s):
            trivial.append(s)
            continue
        pick = stand_ins(s, rates)
        if not pick:
            unmatched.append(s)
            continue
        total += statistics.fmean(r.cell_seconds(trials, seeds, replicates) for r in pick)
    return TaskEstimate(None if unmatched else round(total, 1), trivial, unmatched)
