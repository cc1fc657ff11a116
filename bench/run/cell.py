"""One cell of the benchmark: a strategy on a task, searched then evaluated on K seeds.

The search objective is built by `build_objective` from what the study's user attrs hold
(`study_attrs`), so that a `fusebench worker` on another machine rebuilds exactly the objective the
owning run uses (see bench/worker.py).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import torch

from fusebench.core import metrics as metric_lib
from fusebench.core import progress
from fusebench.core import space
from fusebench.features.extract import TaskData
from fusebench.results.records import Record
from fusebench.training.robustness import evaluate_robustness
from fusebench.core.errors import UsageError
from fusebench.search.study import Budget, best_params_or_none, n_done, open_study, pruner_settings, run_search, sampler_settings
from fusebench.search.history import export_history
from fusebench.search.storage import open_storage, redact
from fusebench.measure.timing import TimingConfig, flops_per_sample, measure
from fusebench.training.loop import Batch, TrainConfig, predict_proba, train_model
from fusebench.strategies.base import STRATEGIES, FusionSpec, StrategyInfo

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cell:
    dataset: str
    strategy: str  # record name: the registry name, or "unimodal:<view>"
    info: StrategyInfo
    views: tuple[str, ...]


def parse_selection(name: str) -> tuple[str, tuple[str, ...] | None]:
    """`unimodal:text_lexical` → ("unimodal", ("text_lexical",)); `concat:image+text` → ("concat", ("image",
    "text")); a bare name → (name, None), meaning every view of the task."""
    base, sep, rest = name.partition(":")
    if not sep:
        return name, None
    views = tuple(v.strip() for v in rest.replace(",", "+").split("+") if v.strip())
    if not views:
        raise UsageError(f"strategy {name!r}: name the views after ':' (e.g. unimodal:text or concat:image+text)")
    return base, views


def expand_cells(dataset: str, views: list[str], names: list[str]) -> list[Cell]:
    """Strategy selections → cells for a task. Per-modality strategies get one cell per view (or per
    selected view: `unimodal:VIEW`, `unimodal:A+B`); fusion strategies fuse every view, or the selected
    ones (`concat:A+B`, recorded under that name), and are skipped when the task has fewer than
    `min_modalities` of them. Selected views the task lacks are skipped for this task."""
    cells = []
    for name in names:
        base, chosen = parse_selection(name)
        info = STRATEGIES.get(base)
        use = list(views) if chosen is None else [v for v in chosen if v in views]
        if chosen is not None and len(use) < len(chosen) and not info.per_modality:
            continue  # the fusion asked for a view this task does not have
        if info.per_modality:
            cells += [Cell(dataset, f"{base}:{v}", info, (v,)) for v in use]
        elif len(use) >= info.min_modalities:
            record = base if sorted(use) == sorted(views) else f"{base}:{'+'.join(sorted(use))}"
            cells.append(Cell(dataset, record, info, tuple(sorted(use))))
    return cells


def needed_views(cells: list[Cell]) -> set[str]:
    """The views the cells read: only these are encoded."""
    return {v for c in cells for v in c.views}


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


def _batch(data: TaskData, split: str, cell: Cell, device: torch.device) -> Batch:
    s = data.splits[split]
    return Batch({k: v.to(device) for k, v in s.inputs(cell.info.input_kind, list(cell.views)).items()}, s.labels.to(device))


def study_name(cell: Cell) -> str:
    return f"{cell.dataset}/{cell.strategy}"


def study_attrs(cell: Cell, data: TaskData, ctx: CellContext) -> dict:
    """Everything a worker needs to rebuild this cell's objective, stored with the study."""
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
        "budget": dataclasses.asdict(ctx.budget),
        "sampler": sampler_settings(ctx.budget.search_seed),
        "pruner": pruner_settings(),
        "main_metric": data.config.main_metric,
    }


def open_cell_study(cell: Cell, data: TaskData, ctx: CellContext) -> optuna.Study:
    """Create (or, resuming, load) the cell's study and store/check its user attrs.

    A study created by a different data revision, encoder set, views or training config is an
    error: its trials would not be comparable. A changed trial budget is taken as an extension."""
    study = open_study(study_name(cell), open_storage(ctx.storage), ctx.budget.search_seed)
    attrs = study_attrs(cell, data, ctx)
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
    if old != attrs:
        study.set_user_attr(STUDY_ATTR, attrs)
    return study


def build_objective(cell: Cell, data: TaskData, train_cfg: TrainConfig, budget: Budget, device: torch.device):
    """The search objective of a cell: sample params, train with per-epoch pruning, return the val metric."""
    cfg = data.config
    spec = _spec(data, cell)
    train, val = (_batch(data, s, cell, device) for s in ("train", "val"))

    def objective(trial: optuna.Trial) -> float:
        params = space.sample_params(trial, cell.info.params)
        seed = budget.search_seed * 100_000 + trial.number
        torch.manual_seed(seed)
        model = cell.info.build(spec, params).to(device)

        def report(epoch: int, value: float) -> None:
            trial.report(value, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()

        try:
            result = train_model(model, train, val, train_cfg, cfg.main_metric, seed, on_epoch=report)
        finally:
            progress.advance(progress_key(cell), 1, status=f"trial {trial.number + 1}/{budget.trials}")
        trial.set_user_attr("best_epoch", result.best_epoch)
        trial.set_user_attr("seed", seed)
        return result.val_metric

    return objective


def progress_key(cell: Cell) -> str:
    return f"cell:{study_name(cell)}"


def run_cell(cell: Cell, data: TaskData, ctx: CellContext) -> list[Record]:
    """Search (trainable strategies) then evaluate on every seed; progress shows trials then seeds."""
    steps = (ctx.budget.trials if cell.info.trainable else 0) + len(ctx.budget.eval_seeds)
    progress.start(progress_key(cell), f"{study_name(cell)}", steps, "steps")
    try:
        return _run_cell(cell, data, ctx)
    finally:
        progress.finish(progress_key(cell))


def _run_cell(cell: Cell, data: TaskData, ctx: CellContext) -> list[Record]:
    cfg = data.config
    spec = _spec(data, cell)
    train, val, test = (_batch(data, s, cell, ctx.device) for s in ("train", "val", "test"))

    search_seconds, n_trials = 0.0, 0
    best = None
    if cell.info.trainable:
        study = open_cell_study(cell, data, ctx)
        objective = build_objective(cell, data, ctx.train, ctx.budget, ctx.device)
        study, search_seconds = run_search(study, objective, ctx.budget)  # waits for other workers' trials too
        export_history(study, ctx.out_dir)  # reports read this file, never the storage
        n_trials = n_done(study)
        best = best_params_or_none(study)
    params = space.params_from_dict(cell.info.params, best) if best else cell.info.params()

    records, predictions = [], []
    throughput = flops = None
    for i, seed in enumerate(ctx.budget.eval_seeds):
        progress.advance(progress_key(cell), 0, status=f"seed {i + 1}/{len(ctx.budget.eval_seeds)}")
        torch.manual_seed(seed)
        model = cell.info.build(spec, params).to(ctx.device)
        result = train_model(model, train, val, ctx.train, cfg.main_metric, seed)
        probs = predict_proba(model, test.inputs, ctx.train.eval_batch_size)
        labels = test.labels.cpu().numpy()
        scores = metric_lib.compute(cfg.metrics, labels, probs)
        robustness = evaluate_robustness(model, test.inputs, labels, cfg.main_metric, seed, ctx.train.eval_batch_size)
        if throughput is None:  # a property of the architecture, measured once per cell
            throughput = measure(model, test.inputs, ctx.device, ctx.timing, result.train_samples_per_s)
            flops = flops_per_sample(model, test.inputs)
        clusters = list(data.splits["test"].clusters) or [str(i) for i in range(len(labels))]
        predictions.append(pd.DataFrame({"seed": seed, "index": np.arange(len(labels)), "label": labels,
                                         "cluster": clusters, "pred": probs.argmax(1),
                                         "prob": list(probs.astype(np.float32))}))
        progress.advance(progress_key(cell), 1)
        records.append(
            Record(
                dataset=cell.dataset,
                task=cfg.task,
                strategy=cell.strategy,
                family=cell.info.family,
                modalities=list(cell.views),
                seed=seed,
                status="ok",
                params=_as_dict(params),
                metrics=scores,
                main_metric_name=cfg.main_metric,
                main_metric=scores[cfg.main_metric],
                val_main_metric=result.val_metric,
                n_trials=n_trials,
                n_trials_budget=ctx.budget.trials if cell.info.trainable else 0,
                search_timeout_s=ctx.budget.timeout_s,
                search_seconds=search_seconds,
                sampler=sampler_settings(ctx.budget.search_seed) if cell.info.trainable else {},
                pruner=pruner_settings() if cell.info.trainable else {},
                train_seconds=result.train_seconds,
                best_epoch=result.best_epoch,
                throughput=throughput,
                params_count=sum(p.numel() for p in model.parameters() if p.requires_grad),
                flops_per_sample=flops,
                device=device_name(ctx.device),
                encoders={v: data.encoders[v] for v in cell.views},
                data_fingerprint=data.fingerprint,
                robustness=robustness,
            )
        )
    pred_path = ctx.out_dir / "predictions" / cell.dataset / f"{cell.strategy.replace(':', '__')}.parquet"
    pred_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = pred_path.with_suffix(".tmp")
    pd.concat(predictions).to_parquet(tmp)
    tmp.replace(pred_path)
    return records


def _as_dict(params: object) -> dict:
    import dataclasses

    return dataclasses.asdict(params)  # type: ignore[call-overload]


def device_name(device: torch.device) -> str:
    from fusebench.measure.timing import device_name as _name

    return _name(device)
