"""One cell of the benchmark: a strategy on a task, searched then evaluated on K seeds.

The search objective is built by `build_objective` from what the study's user attrs hold
(`study_attrs`), so that a `fusebench worker` on another machine rebuilds exactly the objective the
owning run uses (see bench/worker.py).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import torch

from fusebench.core import deadline, progress, space
from fusebench.core import metrics as metric_lib
from fusebench.core.code_id import code_id
from fusebench.core.encmode import ENCODER_LR_PARAM, ENCODER_LR_SPACE, FineTuneSettings
from fusebench.core.errors import UsageError
from fusebench.features.extract import TaskData
from fusebench.measure.timing import TimingConfig, device_name, flops_per_sample, measure
from fusebench.results.records import Record
from fusebench.results.resample import prediction_path, write_predictions
from fusebench.run.seed_store import SeedStore, rng_state, seed_key, set_rng_state
from fusebench.run.selection import Cell, expand_cells, needed_views, parse_selection  # noqa: F401 (their old home)
from fusebench.run.trials import TrialInputs, build_batch_objective
from fusebench.search.clock import search_time
from fusebench.search.history import export_history
from fusebench.search.storage import open_storage, redact
from fusebench.search.study import (
    Budget,
    TrialCounts,
    best_params_or_none,
    open_study,
    pruner_settings,
    replicate_study_name,
    run_search,
    sampler_settings,
    trial_counts,
    trial_status,
)
from fusebench.search.trial_batch import run_batched_search, trials_batched
from fusebench.strategies.base import FusionSpec
from fusebench.training.batched import fit_seeds
from fusebench.training.finetune.setup import CellSetup
from fusebench.training.loop import TrainConfig, TrainResult, predict_proba, train_model
from fusebench.training.robustness import evaluate_robustness

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CellContext:
    """What every cell of a run shares."""

    budget: Budget
    train: TrainConfig
    timing: TimingConfig
    device: torch.device
    storage: str  # URL (see bench.storage); each process opens it itself
    out_dir: Path
    size: str = "full"  # the suite's dataset size, stored with the study for workers
    data_root: str = ""
    rerank_k: int = 10  # retrieval tasks: dual-encoder candidates per query that a re-ranker re-scores
    rerank_negatives: str = "random"  # retrieval tasks: "random" or "hard" (dual-encoder top-k) training negatives
    batch_seeds: bool = True  # train the K evaluation seeds as one batched model where the strategy allows
    trial_batch: int = 1  # search trials asked and trained together (1: one after another)
    finetune: FineTuneSettings = field(default_factory=FineTuneSettings)  # cells whose mode is not frozen (docs/finetune.md)


STUDY_ATTR = "fusebench"  # the study user attr holding what a worker needs to rebuild the objective


def _spec(data: TaskData, cell: Cell) -> FusionSpec:
    """Sizes of the inputs this strategy receives: pooled vectors or token sequences, whose width
    can differ (log-mel pools to mean+std = 2×bands, its tokens have one value per band)."""
    train = data.splits["train"]
    source = train.pooled if cell.info.input_kind == "pooled" else train.tokens
    return FusionSpec(
        {v: source[v].shape[-1] for v in cell.views},
        {v: train.tokens[v].shape[1] for v in cell.views},
        data.config.num_classes,
    )


def _setup(data: TaskData, cell: Cell, device: torch.device, finetune: FineTuneSettings) -> CellSetup:
    """The cell's batches and model builder: cached features, or towers for its fine-tuned views."""
    return CellSetup(data, cell.views, cell.info.input_kind, cell.mode, finetune, device)


def study_name(cell: Cell, replicate: int = 0) -> str:
    return replicate_study_name(f"{cell.dataset}/{cell.strategy}", replicate)


def study_attrs(cell: Cell, data: TaskData, ctx: CellContext, replicate: int = 0) -> dict:
    """Everything a worker needs to rebuild this cell's objective, stored with the study."""
    budget = ctx.budget.for_replicate(replicate)
    return {
        "dataset": cell.dataset,
        "strategy": cell.strategy,
        "registry_name": cell.info.name,
        "views": list(cell.views),
        "size": ctx.size,
        "data_root": ctx.data_root,
        "data_fingerprint": data.fingerprint,
        "encoders": {v: data.encoders[v] for v in cell.views},
        "train": dataclasses.asdict(ctx.train),
        "budget": dataclasses.asdict(budget),
        "replicate": replicate,
        "sampler": sampler_settings(budget.search_seed),
        "pruner": pruner_settings(),
        "main_metric": data.config.main_metric,
        "search_space": space.search_space(cell.info.params),
        **({} if cell.mode.frozen else {"encoder_mode": str(cell.mode), "finetune": dataclasses.asdict(ctx.finetune)}),
        "trial_batch": ctx.trial_batch,  # workers ask and train trials in the same batches
    }


def open_cell_study(cell: Cell, data: TaskData, ctx: CellContext, replicate: int = 0) -> optuna.Study:
    """Create (or, resuming, load) the study of the cell's search replicate and store/check its user attrs.

    A study created by a different data revision, encoder set, views or training config is an
    error: its trials would not be comparable. A changed trial budget is taken as an extension."""
    budget = ctx.budget.for_replicate(replicate)
    study = open_study(study_name(cell, replicate), open_storage(ctx.storage), budget.search_seed)
    attrs = study_attrs(cell, data, ctx, replicate)
    old = study.user_attrs.get(STUDY_ATTR)
    if old:
        # a study written before a TrainConfig field existed used that field's default
        old = {**old, "train": {**dataclasses.asdict(TrainConfig()), **(old.get("train") or {})}}
        for key in ("data_fingerprint", "encoders", "views", "train", "size"):
            if old.get(key) != attrs[key]:
                raise UsageError(
                    f"study {study.study_name!r} in {redact(ctx.storage)} was created with {key}={old.get(key)!r}, "
                    f"this run has {attrs[key]!r}; use another --out/--storage or the original config"
                )
        # a study from before `search_space` was stored gives no answer; optuna itself refuses a changed choice list
        changed = space.space_changes(old["search_space"], attrs["search_space"]) if "search_space" in old else []
        if changed:
            raise UsageError(
                f"study {study.study_name!r} in {redact(ctx.storage)} was searched over another search space of "
                f"{cell.strategy!r} ({'; '.join(changed)}): its trials and this code's are not one search; "
                "finish it with the code that started it, search it again "
                f"(`fusebench forget RUN_DIR {cell.dataset}/{cell.strategy}`), or use another --out/--storage")
    if old != attrs:
        study.set_user_attr(STUDY_ATTR, attrs)
    return study


def build_objective(cell: Cell, data: TaskData, train_cfg: TrainConfig, budget: Budget, device: torch.device,
                    finetune: FineTuneSettings | None = None):
    """The search objective of a cell: sample params, train with per-epoch pruning, return the val metric."""
    cfg = data.config
    spec = _spec(data, cell)
    setup = _setup(data, cell, device, finetune or FineTuneSettings())
    train, val = (setup.batch(s) for s in ("train", "val"))
    train_cfg = setup.train_config(train_cfg)

    def objective(trial: optuna.Trial) -> float:
        params = space.sample_params(trial, cell.info.params)
        encoder_lr = ENCODER_LR_SPACE.suggest(trial, ENCODER_LR_PARAM) if setup.fine_tuned else None  # frozen: no draw
        seed = budget.search_seed * 100_000 + trial.number
        torch.manual_seed(seed)
        model = setup.wrap(cell.info.build(spec, params).to(device), encoder_lr)

        def report(epoch: int, value: float) -> None:
            trial.report(value, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()

        try:
            result = train_model(model, train, val, train_cfg, cfg.main_metric, seed, on_epoch=report)
        finally:
            progress.advance(progress_key(cell), 1, status=trial_status(budget, trial))
        trial.set_user_attr("best_epoch", result.best_epoch)
        trial.set_user_attr("best_step", result.best_step)
        trial.set_user_attr("seed", seed)
        return result.val_metric

    return objective


def search(study: optuna.Study, cell: Cell, data: TaskData, train_cfg: TrainConfig, budget: Budget,
           device: torch.device, trial_batch: int = 1,
           finetune: FineTuneSettings | None = None) -> tuple[optuna.Study, float]:
    """The study's search loop (the owning run's and a worker's): one trial at a time, or rounds of
    `trial_batch` trials trained together where they share a shape (bench/run/trials.py; frozen
    encoders only: fine-tuned cells train one trial at a time)."""
    if trial_batch > 1 and cell.mode.frozen:
        setup = _setup(data, cell, device, finetune or FineTuneSettings())
        inputs = TrialInputs(_spec(data, cell), setup.batch("train"), setup.batch("val"), data.config.main_metric,
                             progress_key(cell))
        return run_batched_search(study, build_batch_objective(cell, inputs, train_cfg, budget, device), budget,
                                  trial_batch)
    return run_search(study, build_objective(cell, data, train_cfg, budget, device, finetune), budget)


def progress_key(cell: Cell) -> str:
    return f"cell:{study_name(cell)}"


def run_cell(cell: Cell, data: TaskData, ctx: CellContext) -> list[Record]:
    """Search (trainable strategies) then evaluate on every seed; progress shows trials then seeds."""
    deadline.check(f"cell {cell.dataset}/{cell.strategy}")
    reps = ctx.budget.replicates if cell.info.trainable else 1
    steps = reps * ((ctx.budget.trials if cell.info.trainable else 0) + len(ctx.budget.eval_seeds))
    progress.start(progress_key(cell), f"{study_name(cell)}", steps, "steps")
    try:
        return _run_cell(cell, data, ctx)
    finally:
        progress.finish(progress_key(cell))


@dataclass(frozen=True)
class SearchOutcome:
    """What one search replicate of a cell produced (a trivial baseline has no search)."""

    replicate: int
    best: dict | None
    counts: TrialCounts
    seconds: float  # search seconds of the replicate over every process (bench/search/clock.py)
    cap_bound: bool  # the search cap stopped the search before its budget was spent
    trials_batched: int = 0  # trials that trained inside a batch of two or more
    seconds_complete: bool = True  # False: part of the search ran before seconds were kept in the study
    clock: str = ""  # what `seconds` count (bench/search/clock.py: SearchTime.clock)
    lost: float = 0.0  # seconds of trials a kill or an interrupt threw away (retried): not in `seconds`


def search_replicate(cell: Cell, data: TaskData, ctx: CellContext, replicate: int) -> SearchOutcome:
    """Run (or resume, or wait for workers on) the study of one search replicate."""
    budget = ctx.budget.for_replicate(replicate)
    study = open_cell_study(cell, data, ctx, replicate)
    done_before = min(trial_counts(study, budget.trials).spent, budget.trials)
    if done_before:  # resumed: the steps already done count, so that the progress and its ETA are true
        progress.skip(progress_key(cell), done_before, status=f"replicate {replicate + 1}: {done_before} trial(s) done before")
    study, _ = search(study, cell, data, ctx.train, budget, ctx.device, ctx.trial_batch,
                      ctx.finetune)  # waits for other workers' trials too
    spent = search_time(study)  # every process's seconds, the killed ones' included
    export_history(study, ctx.out_dir)  # reports read this file, never the storage
    counts = trial_counts(study, budget.trials)
    if counts.spent < budget.trials:
        log.warning("  %s replicate %d: the %.0fs cap stopped the search at %d/%d trials", cell.strategy, replicate,
                    budget.timeout_s, counts.spent, budget.trials)
    return SearchOutcome(replicate, best_params_or_none(study), counts, spent.seconds, counts.spent < budget.trials,
                         trials_batched(study), spent.complete, spent.clock, spent.lost)


def _run_cell(cell: Cell, data: TaskData, ctx: CellContext) -> list[Record]:
    """R search replicates (trainable strategies; a trivial baseline has one, without search), the
    best params of each retrained and scored on the K evaluation seeds."""
    if cell.info.trainable:
        searches = [search_replicate(cell, data, ctx, r) for r in range(ctx.budget.replicates)]
    else:
        searches = [SearchOutcome(0, None, TrialCounts(0, 0, 0, 0, 0), 0.0, False)]
    records: list[Record] = []
    predictions: list[pd.DataFrame] = []
    for search in searches:
        records += _evaluate(cell, data, ctx, search, predictions)
    write_predictions(predictions, prediction_path(ctx.out_dir, cell.dataset, cell.strategy))
    return records


def _evaluate(cell: Cell, data: TaskData, ctx: CellContext, search: SearchOutcome,
              predictions: list[pd.DataFrame]) -> list[Record]:
    """Retrain the best params of one search replicate on every evaluation seed and score on test."""
    cfg = data.config
    spec = _spec(data, cell)
    setup = _setup(data, cell, ctx.device, ctx.finetune)
    train_cfg = setup.train_config(ctx.train)
    train, val, test = (setup.batch(s) for s in ("train", "val", "test"))
    best, encoder_lr = setup.split_params(search.best)  # fine-tuning: the searched encoder rate (frozen: None)
    params = space.params_from_dict(cell.info.params, best) if best else cell.info.params()
    budget = ctx.budget.for_replicate(search.replicate)
    seeds = list(ctx.budget.eval_seeds)
    record_params = {**dataclasses.asdict(params), **({} if encoder_lr is None else {ENCODER_LR_PARAM: encoder_lr})}
    store = SeedStore(ctx.out_dir, cell.dataset, cell.strategy)
    key = {seed: seed_key({"fingerprint": data.fingerprint, "strategy": cell.strategy, "mode": str(cell.mode),
                           "replicate": search.replicate, "seed": seed, "params": record_params,
                           "train": dataclasses.asdict(train_cfg)}) for seed in seeds}
    code = code_id(cell.info.cls)  # the strategy's source: a seed stored by other code is retrained
    kept: dict[int, tuple[Record, pd.DataFrame]] = {}  # seed → its record and test predictions
    earlier: dict[int, dict[str, str] | None] = {}  # seed scored by an earlier process → generator states after it
    for seed in seeds:
        if (stored := store.load(search.replicate, seed, key[seed], device_name(ctx.device), code)) is not None:
            kept[seed] = (stored.record, stored.predictions)
            earlier[seed] = stored.rng
    todo = [seed for seed in seeds if seed not in kept]
    if kept:
        log.info("  %s replicate %d: %d of %d evaluation seed(s) kept from an earlier process; training %d",
                 cell.strategy, search.replicate, len(kept), len(seeds), len(todo))
        progress.skip(progress_key(cell), len(kept), status=f"{len(kept)} seed(s) kept")
    # throughput is a property of the architecture: measured once per replicate (a kept seed's is reused)
    measured = next((r for r, _ in kept.values() if r.throughput is not None), None)
    throughput, flops = (measured.throughput, measured.flops_per_sample) if measured else (None, None)
    progress.advance(progress_key(cell), 0, status=f"training {len(todo)} seeds")

    def build(seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        return setup.wrap(cell.info.build(spec, params).to(ctx.device), encoder_lr)

    def score(seed: int, result: TrainResult, fit_seconds: float, together: int) -> None:
        """Test metrics, robustness and (once) throughput of one fitted seed; stored at once."""
        nonlocal throughput, flops
        progress.advance(progress_key(cell), 0, status=f"seed {seeds.index(seed) + 1}/{len(seeds)}")
        model = result.model
        t0 = time.perf_counter()
        probs = predict_proba(model, test.inputs, train_cfg.eval_batch_size)
        labels = test.labels.cpu().numpy()
        scores = metric_lib.compute(cfg.metrics, labels, probs)
        t1 = time.perf_counter()
        robustness = evaluate_robustness(model, test.inputs, labels, cfg.main_metric, seed, train_cfg.eval_batch_size,
                                         noise=not setup.fine_tuned)  # feature noise needs features, not raw inputs
        t2 = time.perf_counter()
        if throughput is None:  # a property of the architecture, measured once per cell
            timing = ctx.timing if not setup.fine_tuned else dataclasses.replace(
                ctx.timing, batch_size=min(ctx.timing.batch_size, train_cfg.eval_batch_size), repetitions=5, warmup=1)
            throughput = measure(model, test.inputs, ctx.device, timing, result.train_samples_per_s)
            flops = flops_per_sample(model, test.inputs)
        phases = {"evaluation": fit_seconds + t1 - t0, "robustness": t2 - t1, "throughput": time.perf_counter() - t2}
        clusters = list(data.splits["test"].clusters) or [str(i) for i in range(len(labels))]
        frame = pd.DataFrame({"replicate": search.replicate, "seed": seed,
                              "index": np.arange(len(labels)), "label": labels,
                              "cluster": clusters, "pred": probs.argmax(1),
                              "prob": list(probs.astype(np.float32))})
        record = Record(
            dataset=cell.dataset,
            task=cfg.task,
            strategy=cell.strategy,
            family=cell.info.family,
            modalities=list(cell.views),
            seed=seed,
            replicate=search.replicate,
            status="ok",
            params=record_params,
            metrics=scores,
            main_metric_name=cfg.main_metric,
            main_metric=scores[cfg.main_metric],
            val_main_metric=result.val_metric,
            **search.counts.record_fields(),  # n_trials* and cap_bound
            search_timeout_s=ctx.budget.timeout_s,
            search_seconds=search.seconds,
            search_seconds_complete=search.seconds_complete,
            search_clock=search.clock,  # the study's: a resumed study may have counted another clock before
            search_seconds_lost=search.lost,
            sampler=sampler_settings(budget.search_seed) if cell.info.trainable else {},
            pruner=pruner_settings() if cell.info.trainable else {},
            train_seconds=result.train_seconds,
            best_epoch=result.best_epoch,
            best_step=result.best_step,
            throughput=throughput,
            params_count=sum(p.numel() for p in model.parameters() if p.requires_grad),
            flops_per_sample=flops,
            device=device_name(ctx.device),
            encoders={v: data.encoders[v] for v in cell.views},
            encoder_mode=str(cell.mode) if setup.fine_tuned else "frozen",
            data_fingerprint=data.fingerprint,
            code_id=code,
            robustness=robustness,
            seeds_batched=together,
            trials_batched=search.trials_batched,
            phase_seconds={k: round(v, 4) for k, v in phases.items()},
        )
        # the generator state the next seed's fit starts from (one after another): a resume puts it back
        store.save(search.replicate, seed, key[seed], record, frame, rng_state(ctx.device))  # survives a kill from here on
        kept[seed] = (record, frame)
        progress.advance(progress_key(cell), 1)

    def before_fit(seed: int) -> None:
        """One after another, seed k's fit starts where seed k-1's scoring left torch's generator; when
        k-1 was scored by an earlier process, its stored state is put back (an uninterrupted run's numbers)."""
        deadline.check(f"evaluation seed {seed} of {cell.dataset}/{cell.strategy}")  # the seeds before it are stored
        i = seeds.index(seed)
        if i and (states := earlier.get(seeds[i - 1])) is not None:
            set_rng_state(states, ctx.device)

    # fine-tuned seeds train one after another (each holds its own encoder copies)
    if todo:
        deadline.check(f"the evaluation seeds of {cell.dataset}/{cell.strategy}")
    fits = fit_seeds(build, todo, train, val, train_cfg, cfg.main_metric, batched=ctx.batch_seeds and not setup.fine_tuned,
                     on_result=score, batch_of=len(seeds), before_fit=before_fit) if todo else None
    predictions += [kept[seed][1] for seed in seeds]
    records = [kept[seed][0] for seed in seeds]
    if fits is not None and not fits.batched and cell.info.trainable and len(todo) > 1:
        log.debug("  %s: %d seeds trained one after another (%s)", cell.strategy, len(todo), fits.reason)
    return records
