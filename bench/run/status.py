"""`fusebench timing status RUN_DIR`: where a long run stands, and what the rest would take.

The standard suite takes days on a CPU and is resumed across interruptions, so "how far is it, how
fast does it go, how long is left" must be answerable from the run directory alone, while it runs
or after it stopped: cells done / planned per task (run.json `plan`, written by `fusebench run`),
the wall time per phase so far (run.json `phases`, saved after each dataset and cell, so a killed
process loses only its running cell's time and the part of its unfinished dataset's encode that no
checkpoint saved: a resumed encode adds the saved chunks' seconds to `encoding`), each task's
encoding rates, and the measured process-seconds of its finished cells (search per replicate +
evaluation, robustness, throughput from the records). A cell counts as done exactly when the
runner would skip it on resume (`done_cells`: an ok record for every search replicate ×
evaluation seed, not merely as many records). The time left is each task's remaining cells × the
mean of its finished cells *of the same input kind* (token-level attention models take several
times a pooled head's time: run 3's ESC-50 mean of two token cells and one pooled cell, put on 19
mostly pooled cells left, said 36 h where the probes said 2.3). Where the task has finished no cell of
that kind, its other kind's mean × the ratio of the two kinds' means in the tasks that finished both
(geometric mean over those tasks): the standard run's Flickr8k ITM, two token cells finished, put its
16 pooled cells at the token mean, 44 h, where ESC-50's pooled cells took 0.11 of its token cells'
time. Only where no task has both kinds, the mean of all its finished cells. A task with no finished
cell has no estimate (None), never a guess.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fusebench.core.code_id import code_id
from fusebench.core.errors import UsageError
from fusebench.results.records import Record, done_cells, load_records
from fusebench.results.retrieval_stats import BASE
from fusebench.run.in_progress import CellProgress, cells_in_progress
from fusebench.run.probe_estimate import CellRate, TaskEstimate, estimate_cells, is_trivial, probe_rates
from fusebench.search.study import Budget
from fusebench.strategies import STRATEGIES


@dataclass(frozen=True)
class TaskStatus:
    dataset: str
    cells_planned: int
    cells_done: int
    cells_failed: int
    encode_items_per_s: dict[str, Any]
    prepare_seconds: float | None
    cell_seconds_mean: float | None  # process-seconds of one finished cell (all replicates and seeds)
    seconds_left: float | None  # remaining cells × their kind's mean (else the mean); None without a finished cell
    # finished cells whose search resumed after a kill and whose records lack the killed process's
    # search seconds (written before they were summed over processes): time too low, out of the mean
    cells_resumed: int = 0
    probe: dict[str, Any] | None = None  # with --probe: TaskEstimate of the remaining cells at the probe's rates
    cell_seconds_by_kind: dict[str, float] | None = None  # the mean per input kind ("tokens", "pooled")
    # a kind this task finished no cell of, timed at another kind's mean × their ratio elsewhere: kind -> how
    kinds_scaled: dict[str, str] | None = None

    @property
    def complete(self) -> bool:
        return self.cells_done == self.cells_planned


def _cell_seconds(records: list[Record]) -> float:
    """A finished cell's process-seconds: each replicate's search once, every record's in-cell phases."""
    searched = {r.replicate: r.search_seconds for r in records}
    return sum(searched.values()) + sum(sum(r.phase_seconds.values()) for r in records)


def _input_kind(strategy: str) -> str | None:
    """"tokens" or "pooled" for a registered strategy (`unimodal:VIEW`, `FUSION:A+B` by their base), else None."""
    name = strategy.split(":")[0]
    return STRATEGIES.get(name).input_kind if name in STRATEGIES.names() else None


def strategy_code(strategy: str) -> str | None:
    """The code id (bench/core/code_id.py) this checkout gives a cell's strategy: `dual_encoder`,
    `rerank:X`, `X`, `X:VIEW`, `X+ft:MODE`; None for a name it does not know (a plugin not loaded)."""
    from fusebench.run.retrieval_cell import retrieval_code

    if strategy == BASE:
        return retrieval_code(None)
    name = strategy.removeprefix("rerank:").split("+ft")[0].split(":")[0]
    if name not in STRATEGIES.names():
        return None
    info = STRATEGIES.get(name)
    return retrieval_code(info) if strategy.startswith("rerank:") else code_id(info.cls)


def _code_changed(by_cell: dict[tuple[str, str], list[Record]], finished: set) -> list[str]:
    """Finished cells a record of which names strategy code other than this checkout's."""
    return sorted(f"{ds}/{s}" for (ds, s), recs in by_cell.items() if (ds, s) in finished
                  and (now := strategy_code(s)) and any(r.code_id and r.code_id != now for r in recs))


def _kind_means(timed: list[tuple[str, float]]) -> dict[str, float]:
    """The mean seconds of the finished cells `timed` (strategy, seconds) per input kind."""
    by_kind: dict[str, list[float]] = {}
    for s, t in timed:
        if (kind := _input_kind(s)) is not None:
            by_kind.setdefault(kind, []).append(t)
    return {k: statistics.fmean(v) for k, v in by_kind.items()}


def kind_ratios(tasks: dict[str, dict[str, float]]) -> dict[tuple[str, str], tuple[float, list[str]]]:
    """(kind a, kind b) -> (a's mean / b's mean, geometric mean over the tasks that finished cells of
    both; those tasks), from each task's `_kind_means`."""
    pairs: dict[tuple[str, str], list[tuple[float, str]]] = {}
    for task, means in sorted(tasks.items()):
        for a in means:
            for b in means:
                if a != b and means[a] > 0 and means[b] > 0:
                    pairs.setdefault((a, b), []).append((means[a] / means[b], task))
    return {k: (statistics.geometric_mean(r for r, _ in v), [t for _, t in v]) for k, v in pairs.items()}


def _seconds_left(left: list[str], timed: list[tuple[str, float]], ratios: dict[tuple[str, str], tuple[float, list[str]]]
                  ) -> tuple[float | None, dict[str, float], dict[str, str]]:
    """The remaining cells `left` at the mean of the finished cells `timed` of their input kind; for a
    kind with none here, another kind's mean here × `ratios` (module docstring); else at the mean of
    all. Also the mean per kind, and how each scaled kind was timed."""
    if not timed:
        return (0.0 if not left else None), {}, {}
    overall = statistics.fmean(t for _, t in timed)
    means = _kind_means(timed)
    estimated, scaled = dict(means), {}
    for kind in sorted({k for s in left if (k := _input_kind(s)) is not None} - set(means)):
        have = [(ratios[(kind, k)], k) for k in sorted(means) if (kind, k) in ratios]
        if have:
            (ratio, where), base = have[0]
            estimated[kind] = means[base] * ratio
            scaled[kind] = f"{base} × {ratio:.3g}, the {kind}/{base} ratio of {', '.join(where)}"
    return sum(estimated.get(_input_kind(s) or "", overall) for s in left), means, scaled


def _wanted(meta: dict[str, Any], suite: dict[str, Any]) -> tuple[list[int], int, int]:
    """The evaluation seeds, search replicates and trials per search every cell of this run needs.

    run.json's `protocol` holds what the runner itself compared against (its `Budget`); a run.json
    written before `protocol` existed gets the same `Budget` rebuilt from its suite settings.
    """
    protocol = meta.get("protocol") or {}
    trials = int(protocol.get("trials_per_study", suite.get("trials", 0)))
    if isinstance(protocol.get("eval_seeds"), list) and "replicates" in protocol:
        return [int(s) for s in protocol["eval_seeds"]], max(1, int(protocol["replicates"])), trials
    budget = Budget(int(suite.get("trials", 0)), float(suite.get("timeout_s", 0.0)), max(1, int(suite.get("seeds", 1))),
                    int(suite.get("search_seed", 0)), replicates=max(1, int(suite.get("replicates", 1))))
    return budget.eval_seeds, budget.replicates, trials


@dataclass(frozen=True)
class RunFiles:
    """A run directory's run.json, its protocol and its records."""

    meta: dict[str, Any]
    plan: dict[str, list[str]]
    suite: dict[str, Any]
    eval_seeds: list[int]
    replicates: int
    trials: int
    records: list[Record]


def read_run(run_dir: Path) -> RunFiles:
    run_json = run_dir / "run.json"
    try:
        meta = json.loads(run_json.read_text())
    except FileNotFoundError:
        raise UsageError(f"{run_json}: no run.json; give the directory of a `fusebench run` (its --out)") from None
    except ValueError as exc:
        raise UsageError(f"{run_json}: not JSON ({exc}); restore it or start the run again with --new-run") from None
    plan = meta.get("plan")
    if not isinstance(plan, dict):
        raise UsageError(f"{run_json}: no `plan` (written by fusebench run since this command exists); "
                         "resume the run once (`fusebench run ... --out RUN_DIR`) to record it")
    suite = (meta.get("config") or {}).get("suite") or {}
    eval_seeds, replicates, trials = _wanted(meta, suite)
    records = load_records(run_dir / "results.jsonl") if (run_dir / "results.jsonl").is_file() else []
    return RunFiles(meta, plan, suite, eval_seeds, replicates, trials, records)


def _probe_rates(probe_dirs: list[Path]) -> dict[str, list[CellRate]]:
    """Every probe directory's rates together (a strategy probed twice: both count)."""
    rates: dict[str, list[CellRate]] = {}
    for d in probe_dirs:
        probe = read_run(d)
        for task, found in probe_rates(probe.records, probe.eval_seeds, probe.replicates).items():
            rates.setdefault(task, []).extend(found)
    if not rates:
        raise UsageError(f"{', '.join(map(str, probe_dirs))}: no finished probe cell with in-cell seconds; let the "
                         "probe run finish at "
                         "least one cell per task (`fusebench run --suite ... --out PROBE_DIR`)")
    return rates


def _timed(strategies: list[str], finished: set[tuple[str, str]], by_cell: dict[tuple[str, str], list[Record]],
           ds: str) -> tuple[list[str], list[float], set[str], list[tuple[str, float]]]:
    """A task's finished cells, their process-seconds, the resumed ones among them, and the (strategy,
    seconds) its mean is taken over."""
    done = [s for s in strategies if (ds, s) in finished]
    times = [_cell_seconds(by_cell[(ds, s)]) for s in done]
    # a search resumed after a kill: its records count every process's search seconds (less those of
    # trials the kill threw away and that were retried, `search_seconds_lost`: a cell's time here is
    # that of an uninterrupted one) when `search_seconds_complete`; records written before that (or from
    # a study searched partly by such code) count only the last process's, so such a cell's time
    # is too low and the mean leaves it out when it can
    resumed = {s for s in done if any(r.n_trials_retried and not r.search_seconds_complete for r in by_cell[(ds, s)])}
    # trivial baselines (no search, no training) take seconds, not minutes: they neither enter the
    # mean nor count among the cells left at that mean
    whole = [(s, t) for s, t in zip(done, times) if s not in resumed and not is_trivial(s)] or \
        [(s, t) for s, t in zip(done, times) if not is_trivial(s)]
    return done, times, resumed, whole


def run_status(run_dir: Path, probe_dirs: list[Path] | None = None) -> dict[str, Any]:
    """The status of a run; with `probe_dirs`, each task's remaining cells are also estimated at
    probe runs' rates (bench/run/probe_estimate.py), and the cells both runs finished are compared
    (the estimate's own check)."""
    run = read_run(run_dir)
    meta, records = run.meta, run.records
    finished = done_cells(records, run.eval_seeds, run.replicates)  # the runner's own test of a finished cell
    rates = _probe_rates(probe_dirs) if probe_dirs else None
    by_cell: dict[tuple[str, str], list[Record]] = {}
    failed: set[tuple[str, str]] = set()
    for r in records:
        if r.status == "ok":
            by_cell.setdefault((r.dataset, r.strategy), []).append(r)
        else:
            failed.add((r.dataset, r.strategy))
    tasks, checks = [], []
    timed = {ds: _timed(strategies, finished, by_cell, ds) for ds, strategies in run.plan.items()}
    ratios = kind_ratios({ds: _kind_means(whole) for ds, (_, _, _, whole) in timed.items()})
    for ds, strategies in run.plan.items():
        done, times, resumed, whole = timed[ds]
        trivial = {s for s in strategies if is_trivial(s)}
        mean = statistics.fmean(t for _, t in whole) if whole else None
        left, by_kind, scaled = _seconds_left([s for s in strategies if s not in done and s not in trivial], whole, ratios)
        data = (meta.get("data") or {}).get(ds) or {}
        estimate: TaskEstimate | None = None
        if rates is not None:
            task_rates = rates.get(ds, [])
            estimate = estimate_cells([s for s in strategies if s not in done], task_rates, run.trials,
                                      len(run.eval_seeds), run.replicates)
            for s, measured in zip(done, times):
                probed = [r for r in task_rates if r.strategy == s]
                if probed and s not in trivial:
                    predicted = statistics.fmean(p.cell_seconds(run.trials, len(run.eval_seeds), run.replicates)
                                                 for p in probed)  # as the estimate pools them
                    checks.append({"dataset": ds, "strategy": s, "predicted_s": round(predicted, 1),
                                   "measured_s": round(measured, 1), "ratio": round(measured / predicted, 3),
                                   "resumed": s in resumed})
        tasks.append(TaskStatus(
            dataset=ds, cells_planned=len(strategies), cells_done=len(done),
            cells_failed=sum((ds, s) in failed and s not in done for s in strategies),
            encode_items_per_s=data.get("encode_items_per_s") or {}, prepare_seconds=data.get("prepare_seconds"),
            cell_seconds_mean=None if mean is None else round(mean, 1), cells_resumed=len(resumed),
            seconds_left=None if left is None else round(left, 1),
            probe=None if estimate is None else estimate.as_dict(),
            cell_seconds_by_kind={k: round(v, 1) for k, v in by_kind.items()} or None, kinds_scaled=scaled or None,
        ))
    lefts = [t.seconds_left for t in tasks if not t.complete]
    status = {
        "run_dir": str(run_dir), "suite": run.suite.get("name"), "started_at": meta.get("started_at"),
        "finished_at": meta.get("finished_at"), "phases": meta.get("phases") or {},
        "cells_planned": sum(t.cells_planned for t in tasks), "cells_done": sum(t.cells_done for t in tasks),
        "seconds_left": None if any(v is None for v in lefts) else round(sum(v for v in lefts if v is not None), 1),
        # without it: what the tasks with an estimate have left (the total is more) and the tasks without one
        "seconds_left_at_least": round(sum(v for v in lefts if v is not None), 1),
        "tasks_unestimated": [t.dataset for t in tasks if not t.complete and t.seconds_left is None],
        "tasks": [asdict(t) for t in tasks],
        "code_changed": _code_changed(by_cell, finished),
        "in_progress": [asdict(c) for c in cells_in_progress(
            run_dir, run.plan, finished, run.replicates, run.trials, len(run.eval_seeds),
            {s for ss in run.plan.values() for s in ss if is_trivial(s)})],
    }
    if rates is not None:
        # each unfinished task at its own measured mean where it has one, else at the probe's rates
        best: list[float | None] = [t.seconds_left if t.seconds_left is not None else (t.probe or {}).get("seconds")
                                    for t in tasks if not t.complete]
        known = [v for v in best if v is not None]
        status["probe"] = {"run_dirs": [str(d) for d in probe_dirs or []], "checks": checks,
                           "seconds_left": round(sum(known), 1) if len(known) == len(best) else None}
    return status


def _hours(seconds: float | None, unknown: str = "unknown (no finished cell yet)") -> str:
    if seconds is None:
        return unknown
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def _total_left(status: dict[str, Any]) -> str:
    """The total, or where a task has no finished cell, the other tasks' estimate, which the total exceeds."""
    unknown = status.get("tasks_unestimated") or []
    if status["seconds_left"] is not None or not unknown:
        return _hours(status["seconds_left"])
    if len(unknown) == sum(t["cells_done"] < t["cells_planned"] for t in status["tasks"]):
        return _hours(None)
    return (f"more than {_hours(status['seconds_left_at_least'])}, the estimate of the tasks that have one; "
            f"{', '.join(unknown)} not counted (no finished cell yet)")


def _resumed_note(t: dict[str, Any]) -> str:
    n, done = t.get("cells_resumed", 0), t["cells_done"]
    if not n:
        return ""
    return (f" ({n} resumed cell(s) without the killed process's search seconds left out)" if n < done
            else " (resumed cells without the killed process's search seconds only: too low)")


def _kinds_note(t: dict[str, Any]) -> str:
    kinds = t.get("cell_seconds_by_kind") or {}
    scaled = [f"{k} left at {how}" for k, how in sorted((t.get("kinds_scaled") or {}).items())]
    shown = ([', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))] if len(kinds) > 1 else []) + scaled
    return f" ({'; '.join(shown)})" if shown else ""


def format_status(status: dict[str, Any]) -> str:
    """Markdown: one line per task, then the phases and the total time left (and, with a probe, its
    estimate per task, its check against the cells both runs finished, and the combined total)."""
    probe = status.get("probe")
    lines = [f"run {status['run_dir']} (suite {status['suite']}): {status['cells_done']}/{status['cells_planned']} "
             f"cells done; started {status['started_at']}, finished {status['finished_at'] or 'not yet'}", "",
             "| task | cells done | failed | encode items/s | one cell (process s) | left |"
             + (" left (probe) |" if probe else ""),
             "|---|---|---|---|---|---|" + ("---|" if probe else "")]
    for t in status["tasks"]:
        rates = ", ".join(f"{v}: {r['items_per_s']}" for v, r in sorted(t["encode_items_per_s"].items())
                          if isinstance(r, dict) and "items_per_s" in r) or "cached / not yet"
        done = t["cells_done"] == t["cells_planned"]
        left = "done" if done else _hours(t["seconds_left"])
        row = (f"| {t['dataset']} | {t['cells_done']}/{t['cells_planned']} | {t['cells_failed']} | {rates} | "
               f"{t['cell_seconds_mean'] if t['cell_seconds_mean'] is not None else '-'}{_kinds_note(t)}"
               f"{_resumed_note(t)} | {left} |")
        if probe:
            est = t["probe"] or {}
            names = est.get("unmatched") or []
            unknown = f"unknown (no probe cell for {', '.join(names) if len(names) <= 3 else f'{len(names)} cells'})"
            row += " done |" if done else f" {_hours(est.get('seconds'), unknown)} |"
        lines.append(row)
    started = status.get("in_progress") or []
    if started:  # begun, not finished: how far each got (trials per search replicate, seeds stored)
        lines += ["", "in progress:"] + [f"- {CellProgress(**c).describe()}" for c in started]
    if changed := status.get("code_changed"):
        lines += ["", f"scored by strategy code that has changed since (their records' code id is not this checkout's): "
                  f"{', '.join(changed)}; `fusebench forget {status['run_dir']} CELL...` has the next run score them again"]
    phases = ", ".join(f"{k} {v:.0f} s" for k, v in status["phases"].items())
    lines += ["", f"wall time per phase so far: {phases or 'none recorded yet'}",
              f"time left at the measured rates (one process): {_total_left(status)}"]
    if probe:
        trivial = sorted({s for t in status["tasks"] for s in (t["probe"] or {}).get("trivial", [])})
        lines.append(f"time left, each task at its measured rate or else the probe's ({', '.join(probe['run_dirs'])}): "
                     f"{_hours(probe['seconds_left'], 'unknown (a task with neither)')}"
                     + (f"; counted 0 s: {', '.join(trivial)} (no search, no training)" if trivial else ""))
        for c in probe["checks"]:
            lines.append(f"probe check, {c['dataset']}/{c['strategy']} finished in both runs: predicted "
                         f"{c['predicted_s']:.0f} s, measured {c['measured_s']:.0f} s (× {c['ratio']:.2f})"
                         + (" — resumed after a kill, recorded by code that kept only the last process's "
                            "search seconds: the measured time lacks the killed process's search"
                            if c.get("resumed") else ""))
    return "\n".join(lines)
