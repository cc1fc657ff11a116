"""Runs a suite: for each dataset build, encode (cached), then search and evaluate every cell.

A cell that raises is recorded as failed and the run goes on; finished cells are skipped when
the same command is re-run on the same output directory (records are never duplicated).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from fusebench.config import catalog
from fusebench.config.loader import SuiteConfig
from fusebench.core import deadline, progress
from fusebench.core.diskfull import is_disk_full
from fusebench.core.errors import UsageError
from fusebench.core.io import atomic_write_bytes
from fusebench.core.paths import cache_root, resolve_data_root
from fusebench.data.builders import build_tables
from fusebench.data.splits import class_counts, missing_classes
from fusebench.features.cache import FeatureCache
from fusebench.features.extract import encode_task
from fusebench.measure.timing import TimingConfig
from fusebench.reports.leaderboard import write_leaderboard
from fusebench.reports.verdicts import mean_digits
from fusebench.results.provenance import envelope, now, record_session
from fusebench.results.records import Record, done_cells, load_records, merge_records, write_records
from fusebench.results.retrieval_stats import attach_retrieval_stats
from fusebench.results.stats import attach_stats
from fusebench.run import rundir
from fusebench.run.cell import CellContext
from fusebench.run.in_progress import share_done_before
from fusebench.run.parallel import CellPool, pool_jobs
from fusebench.run.phases import PhaseClock, cell_seconds, save_with_sweep_time
from fusebench.run.retrieval_cell import RetrievalCell, RetrievalRun, expand_retrieval_cells
from fusebench.run.seed_store import SeedStore
from fusebench.run.selection import Cell, check_selection, expand_cells, needed_views
from fusebench.search.storage import default_url, kind, one_open_per_journal, redact
from fusebench.search.study import Budget, cap_clock_for, pruner_settings, sampler_settings
from fusebench.strategies import STRATEGIES
from fusebench.training.finetune.inputs import tower_kind
from fusebench.training.finetune.setup import attach_raw
from fusebench.training.loop import TrainConfig

log = logging.getLogger(__name__)

AnyCell = Cell | RetrievalCell  # a retrieval task plans RetrievalCells, every other task Cells


@dataclass(frozen=True)
class RunConfig:
    """Everything `fusebench run` was asked to do, after the suite and flags are merged."""

    suite: SuiteConfig
    out: Path
    data_dir: str | None = None
    device: str = "auto"
    storage: str | None = None
    jobs: int = 1  # cells run in parallel worker processes (CPU or CUDA: parallel.pool_jobs)
    prepare_only: bool = False  # build + encode, create the studies (with their user attrs) and stop: for workers
    amp_bf16: bool = False  # bf16 autocast in training (TrainConfig.amp_bf16)
    compile: bool = False  # torch.compile for training (TrainConfig.compile)
    new_run: bool = False  # --new-run: when `out` holds a run, write to the first free OUT.N beside it
    batch_seeds: bool = True  # train a cell's evaluation seeds as one batched model (--sequential-seeds: off)

    @property
    def strategy_names(self) -> list[str]:
        names = list(self.suite.strategies)
        return STRATEGIES.names() if names == ["all"] else names


@dataclass(frozen=True)
class RunSummary:
    cells_ok: int
    cells_failed: int
    cells_skipped: int
    seconds: float
    run_dir: Path


def train_threads() -> int:
    """CPU threads used while training cells: $FUSEBENCH_TRAIN_THREADS, default 1."""
    import os

    return max(1, int(os.environ.get("FUSEBENCH_TRAIN_THREADS", "1")))


@contextlib.contextmanager
def threads_restored() -> Iterator[None]:
    """Give torch back the caller's intra-op thread count however the block ends.

    A run lowers the count while it trains a dataset's cells (`train_threads`); without this an
    error mid-dataset (a refused study, a storage failure, Ctrl-C) left a library caller, or the
    next command of the same process, with a 1-thread torch.
    """
    before = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was requested but torch sees no CUDA device; use --device cpu or auto")
    if name not in ("cpu", "cuda"):
        raise UsageError(f"--device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


def validate(cfg: RunConfig) -> None:
    """Fail fast (exit 2) on unknown names and views before any data is touched."""
    if not cfg.suite.datasets:
        raise UsageError("no dataset to run: --datasets (or the suite's datasets) named none; e.g. --datasets imdb")
    if not cfg.strategy_names:
        raise UsageError("no strategy to run: --strategies named none; e.g. --strategies concat,unimodal, or 'all'")
    files = catalog.dataset_files()
    all_views: set[str] = set()
    for ds in cfg.suite.datasets:
        files.get(ds)
        all_views |= set(catalog.get_dataset(ds).views)
    for name in cfg.strategy_names:
        check_selection(name, all_views)
    tuned = [str(m) for m in cfg.suite.encoder_modes if not m.frozen]
    if tuned and (cfg.suite.modality_dropout > 0 or cfg.suite.gradient_blending):
        raise UsageError(f"encoders {','.join(tuned)}: modality dropout and gradient blending act on cached features "
                         "and are not supported with fine-tuned encoders; set modality_dropout: 0 and "
                         "gradient_blending: false, or encoders: frozen")


def _expand(dataset: str, names: list[str], suite: SuiteConfig) -> list[AnyCell]:
    ds_cfg = catalog.get_dataset(dataset)
    if ds_cfg.task == "retrieval":  # the dual encoder, then fusion strategies as its re-rankers
        return [*expand_retrieval_cells(dataset, names)]
    tunable = frozenset(v for v, view in ds_cfg.views.items() if tower_kind(view.encoder))
    return [*expand_cells(dataset, sorted(ds_cfg.views), names, suite.encoder_modes, tunable)]


def plan(cfg: RunConfig) -> tuple[dict[str, list[AnyCell]], str]:
    """The cells of every dataset, and the plan line printed before any work."""
    cells = {ds: _expand(ds, cfg.strategy_names, cfg.suite) for ds in cfg.suite.datasets}
    n = sum(len(c) for c in cells.values())
    s = cfg.suite
    line = (f"plan: {len(cells)} task(s) ({', '.join(cells)}), {n} cell(s), {s.trials} trial(s) × {s.seeds} seed(s) "
            f"per cell, size {s.size}, encoders {','.join(s.encoders)}, jobs {cfg.jobs}; results → {cfg.out / 'results.jsonl'}")
    return cells, line


def _mean_main_metric(records: list[Record]) -> float:
    scores = [r.main_metric for r in records if r.main_metric is not None]
    return sum(scores) / len(scores) if scores else float("nan")


def _failed(cell: AnyCell, task: str, exc: BaseException) -> Record:
    return Record(
        dataset=cell.dataset, task=task, strategy=cell.strategy, family=cell.info.family if cell.info else "baseline",
        modalities=list(cell.views),
        seed=None, status="failed", error=f"{type(exc).__name__}: {exc}",
    )


def _with_stats(records: list[Record], out: Path, dataset: str, results: Path, task: str = "") -> list[Record]:
    """Once every cell of `dataset` is done: its statistics (bench.stats) into each of its records."""
    try:
        attach = attach_retrieval_stats if task == "retrieval" else attach_stats
        updated = attach(records, out, dataset)
    except Exception as exc:
        log.error("statistics for %s failed: %s", dataset, exc)
        return records
    if updated != records:
        write_records(results, updated)
    return updated


def run(cfg: RunConfig) -> RunSummary:
    """Run `cfg` holding the run directory's lock (bench.run.rundir): one writer per directory."""
    validate(cfg)
    out = rundir.new_run_dir(cfg.out) if cfg.new_run else cfg.out
    if out != cfg.out:  # shown with -q too: `fusebench stop` and a resume need this directory
        log.warning("--new-run: %s holds a run; writing to %s (resume it with --out %s, without --new-run)", cfg.out, out, out)
    rundir.check_out_dir(out)
    with rundir.RunDirLock(out), rundir.resume_hint(out, cfg.out), deadline.stop_file_watched(out), threads_restored(), \
            one_open_per_journal():
        return _run(dataclasses.replace(cfg, out=out))


def _run(cfg: RunConfig) -> RunSummary:
    started = time.perf_counter()
    device = resolve_device(cfg.device)
    if cfg.amp_bf16 and device.type != "cuda":
        log.info("--amp-bf16 on %s: bf16 autocast runs on CPU; its gain depends on the CPU's bf16 support", device)
    root = resolve_data_root(cfg.data_dir)
    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    storage = cfg.storage or default_url(out)
    kind(storage)  # a bad URL is a usage error before any work
    suite = cfg.suite
    ctx = CellContext(
        budget=Budget(suite.trials, suite.timeout_s, suite.seeds, suite.search_seed, replicates=suite.replicates,
                      cap_clock=cap_clock_for(device)),
        train=TrainConfig(suite.epochs, suite.patience, suite.batch_size, modality_dropout=suite.modality_dropout,
                          gradient_blending=suite.gradient_blending, amp_bf16=cfg.amp_bf16, compile=cfg.compile,
                          patience_steps=suite.patience_steps, min_steps=suite.min_steps, min_delta=suite.min_delta,
                          monitor=suite.monitor),  # type: ignore[arg-type]
        batch_seeds=cfg.batch_seeds,
        trial_batch=suite.trial_batch,
        timing=TimingConfig(batch_size=max(suite.batch_size, 256)),
        device=device, storage=storage, out_dir=out,
        size=suite.size,
        data_root=str(root.resolve()),
        rerank_k=suite.rerank_k,
        rerank_negatives=suite.rerank_negatives,
        finetune=suite.finetune,
    )
    run_json = out / "run.json"
    previous = rundir.read_run_json(run_json)
    rundir.check_resume(out, previous, suite)
    meta = previous or envelope(
        {"suite": dataclasses.asdict(suite), "strategies": cfg.strategy_names, "storage": redact(storage),
         "data_root": str(root), "amp_bf16": cfg.amp_bf16, "compile": cfg.compile},
        device,
    )
    record_session(meta, device, resumed=run_json.is_file())  # resumed_at, and this process in `sessions`
    meta.pop("finished_at", None)  # a resumed run (after --prepare-only, a kill or a finish) is running again
    meta["identity"] = {**rundir.identity(suite), "data_fingerprints": (meta.get("identity") or {}).get("data_fingerprints", {})}
    meta["protocol"] = {"sampler": sampler_settings(suite.search_seed), "pruner": pruner_settings(),
                        "trials_per_study": suite.trials, "search_timeout_s": suite.timeout_s,
                        "search_cap_clock": ctx.budget.cap_clock,
                        "eval_seeds": ctx.budget.eval_seeds, "search_seed": suite.search_seed,
                        "replicates": suite.replicates,
                        "replicate_search_seeds": [ctx.budget.for_replicate(r).search_seed for r in range(suite.replicates)],
                        "trials_counted": "complete + pruned + failed (a dead process's trial is retried, not counted)",
                        "early_stopping": {"monitor": suite.monitor, "patience": suite.patience,
                                           "patience_steps": suite.patience_steps, "min_steps": suite.min_steps,
                                           "min_delta": suite.min_delta}}

    results = out / "results.jsonl"
    records = load_records(results, set_aside=True)
    clock = PhaseClock()
    previous_phases = {k: v for k, v in (meta.get("phases") or {}).items() if k != "report"}
    done = done_cells(records, ctx.budget.eval_seeds, getattr(suite, "replicates", 1))
    cache = FeatureCache(cache_root())
    ok = failed = skipped = 0
    pool = CellPool(pool_jobs(cfg.jobs, device), train_threads())
    by_dataset, plan_line = plan(cfg)
    meta["plan"] = {ds: [c.strategy for c in cells] for ds, cells in by_dataset.items()}  # `fusebench timing status`
    atomic_write_bytes(run_json, json.dumps(meta, indent=2, default=str).encode())  # status works from the start
    total = sum(len(c) for c in by_dataset.values())
    already = sum(1 for cs in by_dataset.values() for c in cs if (c.dataset, c.strategy) in done)
    log.info("%s%s", plan_line, f" ({already} already done)" if already else "")
    progress.start("sweep", "sweep", total, "cells")
    before = share_done_before(out, meta["plan"], done, suite.replicates, suite.trials, len(ctx.budget.eval_seeds), storage)
    if already:
        progress.skip("sweep", already, status="resumed")
    with pool:
        for ds_name in suite.datasets:
            ds_cfg = catalog.get_dataset(ds_name)
            cells = by_dataset[ds_name]
            retrieval = ds_cfg.task == "retrieval"
            todo = [c for c in cells if (c.dataset, c.strategy) not in done]
            skipped += len(cells) - len(todo)
            for cell in cells:  # a kill between a cell's write_records and its clear left its seeds
                if (cell.dataset, cell.strategy) in done:
                    SeedStore(out, cell.dataset, cell.strategy).clear()
            if not todo:
                records = _with_stats(records, out, ds_name, results, ds_cfg.task)  # recomputed on resume
                continue
            deadline.check(f"dataset {ds_name}")  # --stop-after: building and encoding it take minutes on a GPU
            t0 = time.perf_counter()
            try:
                with clock.phase("data"):
                    tables = build_tables(ds_cfg, root, suite.size)
                with clock.phase("encoding"):
                    data = encode_task(ds_cfg, tables, cache, device, views=needed_views(todo))
                    clock.add("encoding", sum(data.resumed_encode_seconds.values()))  # killed processes' share
                    tuned = [c for c in todo if isinstance(c, Cell) and not c.mode.frozen]
                    if tuned:  # raw inputs (token ids, pixels) of the views whose encoders train
                        data = attach_raw(data, tables, needed_views(tuned), suite.finetune, device)
            except UsageError:
                raise
            except Exception as exc:
                if is_disk_full(exc):  # not this dataset's fault: stop (exit 2, bench/cli.py), don't fail every cell
                    raise
                log.error("dataset %s failed to build/encode: %s", ds_name, exc)
                records = merge_records(records, [_failed(c, ds_cfg.task, exc) for c in todo])
                write_records(results, records)
                failed += len(todo)
                progress.advance("sweep", len(todo), status=f"{ds_name} failed to build/encode", work=0)
                continue
            counts = class_counts({s: [tables.original_label(y) for y in tables.splits[s]["label"]]
                                   for s in tables.splits})  # keyed by the data file's labels
            missing = {} if retrieval else missing_classes(counts)  # retrieval rows are all matching pairs
            for split, absent in missing.items():
                log.warning("%s: %d class(es) have no %s example: %s", ds_name, len(absent), split, ", ".join(absent))
            for label, why in tables.excluded_classes.items():
                log.warning("%s: class %s excluded: %s", ds_name, label, why)
            rundir.check_data(out, meta, ds_name, data.fingerprint)
            meta["identity"]["data_fingerprints"][ds_name] = data.fingerprint
            earlier = meta["data"].get(ds_name) or {}
            measured = (earlier.get("encode_items_per_s") or {}) if earlier.get("fingerprint") == data.fingerprint else {}
            meta["data"][ds_name] = {
                "fingerprint": data.fingerprint,
                "class_counts": counts,
                "missing_classes": missing,
                "excluded_classes": tables.excluded_classes,
                "num_classes": data.config.num_classes,
                "label_of_class": None if tables.classes is None else list(tables.classes),
                "sources": data.sources,
                "encoders": {**(earlier.get("encoders") or {}), **data.encoders},  # views this process skipped too
                "rows": {s: len(d) for s, d in data.splits.items()},
                "prepare_seconds": round(time.perf_counter() - t0, 2),
                # a view this process found cached keeps the rate an earlier process of this run measured
                "encode_items_per_s": {**dict.fromkeys(data.encode_items_per_s), **measured,
                                       **{v: r for v, r in data.encode_items_per_s.items() if r is not None}},
            }
            meta["phases"] = clock.as_dict(previous_phases)  # kept if this process is killed later
            atomic_write_bytes(run_json, json.dumps(meta, indent=2, default=str).encode())
            log.info("%s ready in %.1fs: %s", ds_name, time.perf_counter() - t0, meta["data"][ds_name]["rows"])
            encode_threads = torch.get_num_threads()
            if device.type == "cpu" and not any(isinstance(c, Cell) and not c.mode.frozen for c in todo):
                # Small fusion models train several times faster on one thread than on two (no
                # inter-op sync per tiny matmul); encoders above used every core.
                torch.set_num_threads(train_threads())
            c0 = time.perf_counter()
            if cfg.prepare_only:
                from fusebench.run.cell import open_cell_study

                for cell in todo:
                    if isinstance(cell, Cell) and cell.info.trainable:  # Cells: every task but retrieval
                        log.info("  study %s/%s ready in %s", cell.dataset, cell.strategy, redact(storage))
                        for r in range(suite.replicates):
                            open_cell_study(cell, data, ctx, r)
                torch.set_num_threads(encode_threads)
                continue
            cells_t0 = time.perf_counter()
            outcomes: Iterator[tuple[AnyCell, list[Record] | BaseException]]
            if retrieval:  # a retrieval task's cells are all RetrievalCells (_expand)
                run_r = RetrievalRun(data, tables, ctx)
                outcomes = pool.execute_retrieval(run_r, [c for c in todo if isinstance(c, RetrievalCell)])
            else:
                outcomes = pool.execute([c for c in todo if isinstance(c, Cell)], data, ctx)
            stopped: deadline.StopRequested | None = None
            try:
                for cell, outcome in outcomes:
                    if isinstance(outcome, deadline.StopRequested):  # past --stop-after: the other cells' work in flight ends
                        stopped = outcome
                        continue
                    if isinstance(outcome, KeyboardInterrupt):  # a worker's cell was interrupted: the run is, not the cell failed
                        raise outcome
                    if isinstance(outcome, BaseException) and (isinstance(outcome, UsageError) or is_disk_full(outcome)):
                        raise outcome  # the next cells would fail the same way
                    if isinstance(outcome, BaseException):
                        log.error("  %-28s FAILED: %s", cell.strategy, outcome)
                        log.debug("%s", "".join(traceback.format_exception(outcome)))
                        new = [_failed(cell, ds_cfg.task, outcome)]
                        failed += 1
                    else:
                        new = outcome
                        ok += 1
                        log.info("  %-28s %s=%.*f (done at +%.1fs)", cell.strategy, ds_cfg.main_metric,  # rsum on retrieval
                                 mean_digits(retrieval), _mean_main_metric(new), time.perf_counter() - c0)
                    records = merge_records(records, new)
                    write_records(results, records)
                    if not isinstance(outcome, BaseException):  # its records are safe: its kept seeds are not needed
                        SeedStore(out, cell.dataset, cell.strategy).clear()
                    progress.advance("sweep", 1, status=f"last: {cell.dataset}/{cell.strategy}",
                                     work=1 - before.get((cell.dataset, cell.strategy), 0.0))
                    # after the outcome's own writes: a full disk is then named by the file that filled it
                    save_with_sweep_time(meta, clock, previous_phases, cells_t0, run_json)  # a kill -9 keeps it too
            finally:  # a stop (yielded, or raised here with --jobs 1), an interrupt: a stretch without a finished cell counts
                save_with_sweep_time(meta, clock, previous_phases, cells_t0, run_json, on_the_way_out=True)
            if stopped is not None:
                raise stopped
            clock.seconds["cells"] = clock.seconds.get("cells", 0.0) + time.perf_counter() - cells_t0
            with clock.phase("statistics"):
                records = _with_stats(records, out, ds_name, results, ds_cfg.task)
            torch.set_num_threads(encode_threads)
    progress.finish("sweep")
    meta["finished_at"] = now()
    meta["cache"] = {"hits": cache.hits, "misses": cache.misses, "root": str(cache.root)}
    with clock.phase("leaderboard"):
        write_leaderboard(records, out)
    meta["seconds"] = round(time.perf_counter() - started, 2)
    meta["phases"] = clock.as_dict(previous_phases)
    meta["cell_seconds"] = cell_seconds(records)
    atomic_write_bytes(run_json, json.dumps(meta, indent=2, default=str).encode())
    return RunSummary(ok, failed, skipped, time.perf_counter() - started, out)
