"""Result records: one JSON line per dataset × strategy × evaluation seed.

`results.jsonl` is only ever replaced whole (write to a temp file, then rename), so a killed run
leaves either the previous file or the new one, never a half-written record. Loading tolerates a
truncated last line from older writers and reports it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fusebench import SCHEMA_VERSION
from fusebench.core.errors import DataError
from fusebench.core.io import atomic_write_bytes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Throughput:
    train_samples_per_s: float
    infer_samples_per_s: float
    infer_samples_per_s_bs1: float
    latency_ms_p50: float
    latency_ms_p95: float
    peak_mem_mb: float
    # "cuda_max_allocated"; "cpu_peak_rss_region" (VmHWM reset before the measured region, Linux);
    # "cpu_peak_rss_process" (ru_maxrss: the whole process's peak so far, an upper bound)
    peak_mem_kind: str
    batch_size: int  # the evaluation batch size actually measured (after any OOM back-off)
    repetitions: int
    oom_backoff: list[int] = field(default_factory=list)  # batch sizes that ran out of memory first
    torch_version: str = ""
    cuda_version: str | None = None
    timer: str = ""  # "cuda_events" or "perf_counter"
    device: str = ""  # "cuda:<GPU name>" / "cpu:<processor>"
    warmup: int = 0
    peak_mem_delta_mb: float | None = None  # growth of the peak over the memory in use when the region began
    batch_ms_p50: float | None = None  # latency of one batch at `batch_size`
    batch_ms_p95: float | None = None
    error: str | None = None  # why figures are NaN (e.g. out of memory even at batch size 1)


@dataclass(frozen=True)
class Record:
    dataset: str
    task: str
    strategy: str
    family: str
    modalities: list[str]
    seed: int | None  # the evaluation seed
    status: str  # "ok" | "failed"
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    main_metric_name: str = ""
    main_metric: float | None = None
    val_main_metric: float | None = None
    n_trials: int = 0  # trials that used the budget: complete + pruned + failed
    n_trials_budget: int = 0
    n_trials_complete: int = 0
    n_trials_pruned: int = 0
    n_trials_failed: int = 0  # the objective raised (counted in the budget)
    n_trials_retried: int = 0  # failed because their process died (not counted, run again)
    cap_bound: bool = False  # the search cap (timeout_s) stopped the search before the budget was spent
    replicate: int = 0  # search replicate 0..R-1 (records written before replicates existed: 0)
    search_timeout_s: float = 0.0
    search_seconds: float = 0.0  # the replicate's search seconds, summed over every process that searched it
    # search_seconds counts every process (bench/search/clock.py); False: records written before that
    # (the last process's seconds only) or from a study searched partly by such code
    search_seconds_complete: bool = False
    # what search_seconds and the cap count: "wall", "cpu", "wall+cpu" (a study resumed under another
    # clock); "": written before the field, or no search
    search_clock: str = ""
    # seconds of trials that a kill or an interrupt threw away (retried, so counted again in their retry):
    # not in search_seconds; 0.0 also for records written before the field
    search_seconds_lost: float = 0.0
    train_seconds: float = 0.0
    best_epoch: int | None = None  # epoch whose weights early stopping restored (0-based)
    best_step: int | None = None  # optimiser steps taken by then
    throughput: Throughput | None = None
    params_count: int = 0
    flops_per_sample: float | None = None
    device: str = ""
    encoders: dict[str, str] = field(default_factory=dict)
    # How the encoders trained: "frozen" (cached features; records written before the mode existed),
    # "last:N" or "full" (fine-tuned with the fusion; the strategy name then ends in "+ft:<mode>").
    encoder_mode: str = "frozen"
    data_fingerprint: str = ""
    # the strategy code that scored it (bench/core/code_id.py); "" for records written before the field
    code_id: str = ""
    error: str | None = None
    robustness: dict[str, float | None] = field(default_factory=dict)  # "missing:<view>", "noise:<sigma>" → test metric
    seeds_batched: int = 1  # evaluation seeds trained together as one batched model (1: sequentially)
    trials_batched: int = 0  # search trials of this record's study that trained inside a batch of >= 2
    # This record's share of the cell's wall time by phase (seconds): evaluation (fitting its seed,
    # batched fits shared equally, plus test scoring), robustness, throughput (measured once per cell).
    phase_seconds: dict[str, float] = field(default_factory=dict)
    sampler: dict[str, Any] = field(default_factory=dict)  # optuna sampler of the search: name + settings
    pruner: dict[str, Any] = field(default_factory=dict)  # optuna pruner of the search: name + settings
    # Per-cell statistics over all its seeds and test examples (bench.stats.cell_stats): mean, std,
    # ci95_low, ci95_high, p_vs_best_unimodal, p_vs_late_fusion, best_unimodal, beats_best_unimodal, ...
    stats: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @property
    def key(self) -> tuple[str, str, int, int | None]:
        return (self.dataset, self.strategy, self.replicate, self.seed)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Record:
        data = dict(data)
        tp = data.get("throughput")
        tp_known = {f.name for f in dataclasses.fields(Throughput)}
        data["throughput"] = Throughput(**{k: v for k, v in tp.items() if k in tp_known}) if tp else None
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class RecordLineError(ValueError):
    """A line of results.jsonl that is not a whole record (torn JSON, or JSON that is not a record)."""


def _parse_line(line: str) -> Record:
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise RecordLineError(f"not whole JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise RecordLineError(f"a JSON {type(data).__name__}, not a record object")
    missing = sorted(f.name for f in dataclasses.fields(Record)
                     if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in data)
    if missing:
        raise RecordLineError(f"not a record: missing key(s) {missing}")
    if data.get("status") not in ("ok", "failed"):
        raise RecordLineError(f"not a record: status {data.get('status')!r} is not 'ok' or 'failed'")
    try:
        return Record.from_json(data)
    except (TypeError, ValueError, AttributeError) as exc:
        raise RecordLineError(f"not a record: {exc}") from None


def load_records(path: Path, *, strict: bool = False, set_aside: bool = False) -> list[Record]:
    """The records of a `results.jsonl`.

    A line that is not a whole record (a torn write by an older writer, a full disk, a hand edit) is
    skipped with a warning; with `set_aside` it is first appended to `results.jsonl.torn` so that the
    next whole-file write does not erase it (the cell it belonged to is then recomputed, because a
    cell is done only when all its seeds are ok, see `done_cells`). With `strict` such a line is a
    `DataError` naming file, line and why (for `report`, which must not publish a partial board).
    """
    if not path.is_file():
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a UTF-8 results file ({exc.reason} at byte {exc.start})") from None
    out, torn = [], []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(_parse_line(line))
        except RecordLineError as exc:
            if strict:
                raise DataError(f"{path}:{n}: {exc}; remove or repair the line, or re-run `fusebench run` with this "
                                "--out (it sets bad lines aside in results.jsonl.torn and recomputes their cells)") from None
            log.warning("%s:%d: skipping a line that is not a whole record (%s)", path, n, exc)
            torn.append(line)
    if torn and set_aside:
        aside = path.with_name(path.name + ".torn")
        with open(aside, "a", encoding="utf-8") as fh:
            fh.write("".join(t + "\n" for t in torn))
        log.warning("%s: %d bad line(s) kept in %s; their cells will be recomputed", path, len(torn), aside)
    return out


def done_cells(records: Iterable[Record], eval_seeds: Iterable[int], replicates: int = 1) -> set[tuple[str, str]]:
    """(dataset, strategy) cells whose every search replicate × evaluation seed has an ok record.

    One ok seed is not enough: a cell missing any seed (a torn record, a crash between seeds) is
    recomputed, otherwise its statistics would rest on fewer seeds than the others'. A cell that did
    not search (its records carry no sampler: a trivial baseline) runs once, as replicate 0, whatever
    R is; before, such cells were never done with R > 1 and ran again on every resume.
    """
    seeds = list(eval_seeds)
    want = {(rep, seed) for rep in range(max(1, replicates)) for seed in seeds}
    once = {(0, seed) for seed in seeds}  # a cell without a search (majority, random) has one "replicate"
    have: dict[tuple[str, str], set[tuple[int, int | None]]] = {}
    searched: set[tuple[str, str]] = set()
    for r in records:
        if r.status == "ok":
            have.setdefault((r.dataset, r.strategy), set()).add((int(getattr(r, "replicate", 0) or 0), r.seed))
            if r.sampler:  # the runner records its sampler settings exactly when the cell searched
                searched.add((r.dataset, r.strategy))
    return {cell for cell, got in have.items() if (want if cell in searched else once) <= got}


def write_records(path: Path, records: Iterable[Record]) -> None:
    text = "".join(json.dumps(r.to_json(), sort_keys=True, allow_nan=True) + "\n" for r in records)
    atomic_write_bytes(path, text.encode("utf-8"))


def merge_records(existing: list[Record], new: list[Record]) -> list[Record]:
    """New records replace old ones with the same (dataset, strategy, seed); failed ones are superseded."""
    by_key = {r.key: r for r in existing}
    for r in new:
        if r.status == "ok":
            by_key = {k: v for k, v in by_key.items() if not (k[:2] == r.key[:2] and v.status == "failed")}
        by_key[r.key] = r
    return sorted(by_key.values(), key=lambda r: (r.dataset, r.strategy, r.replicate, -1 if r.seed is None else r.seed))
