"""Cells of a retrieval task: the dual encoder alone, and each fusion strategy re-ranking its top-k.

Cell `dual_encoder`: R search replicates (the suite's `replicates`, each an optuna study with its
own sampler seed, same pruner and trial budget as every cell) over `DualEncoderParams` maximising
validation rsum; the best params of each replicate are retrained on the K evaluation seeds and
ranked on the test split. Cell `rerank:<strategy>`: R studies of the strategy on validation AUROC
of matching pairs (as `flickr8k-itm`); for replicate r and evaluation seed s, the dual encoder of
(r, s) — best params of dual-encoder replicate r — proposes the top `rerank_k` candidates of every
query and the strategy (best params of its replicate r, trained with seed s) re-scores them, so a
replicate is one independent search of the whole pipeline. Records carry `replicate` and `seed`.
The dual encoder cell runs first, in this process (every re-ranker reads its studies' best params);
the re-rank cells then run in the run's cell pool (`CellPool.execute_retrieval`: `--jobs` worker
processes, or here with one), each process training the dual encoders it needs once and sharing them between its cells.
A dual encoder of (replicate, seed) is the same model in every process on a CPU (a seeded fit, one thread).
Per-query ranks are the per-example predictions (bench/results/retrieval_stats.py reads them).

Each scored seed is kept on disk at once (bench/run/seed_store.py, as every other cell's): a run stopped or
killed between two seeds retrains only the seeds it had not scored, and ends with an uninterrupted run's
numbers (every fit seeds itself: the dual encoder and the re-ranker from their evaluation seed).

Throughput (once per cell, replicate 0, first seed): train samples/s of the trained model (the dual
encoder's image–caption pairs, or the re-ranker's matching pairs), and inference as test *queries*
per second (images + captions) of the whole ranking call — embedding, blocked top-k/ranking, and
the re-ranker's scoring of the candidates (bench/measure/pipeline_timing.py).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

import numpy as np
import optuna
import pandas as pd
import torch

from fusebench.core import deadline, space
from fusebench.core.code_id import code_id
from fusebench.core.errors import UsageError
from fusebench.data.builders import SPLITS, TaskTables
from fusebench.features.extract import TaskData
from fusebench.measure.pipeline_timing import time_pipeline
from fusebench.measure.timing import device_name
from fusebench.results.records import Record, Throughput
from fusebench.results.resample import prediction_path, write_predictions
from fusebench.results.retrieval_stats import BASE
from fusebench.run.cell import CellContext
from fusebench.run.seed_store import SeedStore, seed_key
from fusebench.run.selection import can_rerank, parse_selection, selected_strategy
from fusebench.search.clock import search_time
from fusebench.search.history import export_history
from fusebench.search.storage import open_storage, redact
from fusebench.search.study import (
    best_params_or_none,
    open_study,
    pruner_settings,
    replicate_study_name,
    run_search,
    sampler_settings,
    trial_counts,
)
from fusebench.strategies.base import FusionSpec, StrategyInfo
from fusebench.training.loop import Batch, train_model
from fusebench.training.rerank import hard_matching_pairs, matching_pairs, rerank
from fusebench.training.retrieval import (
    IMAGE,
    TEXT,
    DualEncoder,
    DualEncoderParams,
    DualResult,
    Ranked,
    RetrievalSplit,
    rank_split,
    train_dual_encoder,
)

log = logging.getLogger(__name__)

PAIR_METRIC = "auroc"


@dataclass(frozen=True)
class RetrievalCell:
    dataset: str
    strategy: str  # "dual_encoder" or "rerank:<registry name>"
    info: StrategyInfo | None  # the re-ranking strategy; None for the dual encoder
    views: tuple[str, ...] = (IMAGE, TEXT)


RetrievalOutcome = tuple[RetrievalCell, list[Record] | BaseException]


def retrieval_code(reranker: StrategyInfo | None) -> str:
    """The code id (bench/core/code_id.py) of a retrieval cell: the dual encoder's, and a re-ranker's strategy
    with it (its records re-rank that dual encoder's candidates). `fusebench timing status` compares the same."""
    return code_id(DualEncoder) if reranker is None else code_id(DualEncoder, reranker.cls)


def expand_retrieval_cells(dataset: str, names: list[str]) -> list[RetrievalCell]:
    """The dual encoder, then one re-rank cell per trainable pair-scoring fusion strategy among `names`. The
    others are said once (info): `--strategies unimodal,majority` on a retrieval task runs the dual encoder only."""
    cells, skipped = [RetrievalCell(dataset, BASE, None)], []
    for name in names:
        base, chosen = parse_selection(name)
        info = selected_strategy(name)
        if chosen is not None and sorted(chosen) != [IMAGE, TEXT]:
            skipped.append(name)  # a selection of other views (unimodal:text, concat:a+b) scores no image–caption pair
        elif not can_rerank(info):
            skipped.append(name)
        elif f"rerank:{base}" not in {c.strategy for c in cells}:  # concat, concat:image+text: one row, planned once
            cells.append(RetrievalCell(dataset, f"rerank:{base}", info))
    if skipped:
        log.info("%s: no rows for %s: a retrieval task runs the dual encoder and re-ranks its candidates with trainable "
                 "fusion strategies of both views (image+text); these are not one (`fusebench list strategies`, column 4)",
                 dataset, ", ".join(skipped))
    return cells


@dataclass(frozen=True)
class RetrievalIndex:
    """What retrieval cells need of a task's tables, small and picklable for the cell pool's workers:
    each split's image group per row and image file per row."""

    groups: dict[str, np.ndarray]
    image_ids: dict[str, list[str]]

    @classmethod
    def of(cls, tables: TaskTables) -> RetrievalIndex:
        return cls({s: np.asarray(tables.splits[s]["group"]) for s in SPLITS},
                   {s: list(tables.splits[s]["image_id"]) for s in SPLITS})


def retrieval_splits(data: TaskData, index: RetrievalIndex, device: torch.device) -> dict[str, RetrievalSplit]:
    return {s: RetrievalSplit.from_split(data.splits[s].to(device), index.groups[s], index.image_ids[s]) for s in SPLITS}


def _study(name: str, data: TaskData, ctx: CellContext, replicate: int = 0) -> optuna.Study:
    budget = ctx.budget.for_replicate(replicate)
    study = open_study(replicate_study_name(name, replicate), open_storage(ctx.storage), budget.search_seed)
    attrs = {"dataset": data.config.name, "strategy": name.split("/", 1)[1], "data_fingerprint": data.fingerprint,
             "encoders": data.encoders, "train": dataclasses.asdict(ctx.train), "size": ctx.size,
             "budget": dataclasses.asdict(budget), "task": "retrieval", "replicate": replicate}
    old = study.user_attrs.get("fusebench")
    for key in ("data_fingerprint", "encoders", "train", "size"):
        if old and old.get(key) != attrs[key]:
            raise UsageError(f"study {name!r} in {redact(ctx.storage)} was created with {key}={old.get(key)!r}, "
                             f"this run has {attrs[key]!r}; use another --out/--storage or the original config")
    if old != attrs:
        study.set_user_attr("fusebench", attrs)
    return study


def _reporter(trial: optuna.Trial):
    def report(epoch: int, value: float) -> None:
        trial.report(value, epoch)
        if trial.should_prune():
            raise optuna.TrialPruned()

    return report


def _search_dual(splits: dict[str, RetrievalSplit], data: TaskData, ctx: CellContext, replicate: int):
    budget = ctx.budget.for_replicate(replicate)
    study = _study(f"{data.config.name}/{BASE}", data, ctx, replicate)

    def objective(trial: optuna.Trial) -> float:
        params = space.sample_params(trial, DualEncoderParams)
        seed = budget.search_seed * 100_000 + trial.number
        res = train_dual_encoder(splits["train"], splits["val"], params, ctx.train, seed, _reporter(trial))
        trial.set_user_attr("best_epoch", res.best_epoch)
        return res.val_rsum

    study, _ = run_search(study, objective, budget)
    export_history(study, ctx.out_dir)  # reports read this file, never the storage
    best = best_params_or_none(study)
    counts = trial_counts(study, budget.trials)
    return (space.params_from_dict(DualEncoderParams, best) if best else DualEncoderParams()), counts, search_time(study)


def _search_reranker(cell: RetrievalCell, pairs: tuple[Batch, Batch], spec: FusionSpec, data: TaskData,
                     ctx: CellContext, replicate: int):
    assert cell.info is not None
    info = cell.info
    budget = ctx.budget.for_replicate(replicate)
    train, val = pairs
    study = _study(f"{data.config.name}/{cell.strategy}", data, ctx, replicate)

    def objective(trial: optuna.Trial) -> float:
        params = space.sample_params(trial, info.params)
        seed = budget.search_seed * 100_000 + trial.number
        torch.manual_seed(seed)
        model = info.build(spec, params).to(ctx.device)
        res = train_model(model, train, val, ctx.train, PAIR_METRIC, seed, on_epoch=_reporter(trial))
        trial.set_user_attr("best_epoch", res.best_epoch)
        return res.val_metric

    study, _ = run_search(study, objective, budget)
    export_history(study, ctx.out_dir)
    best = best_params_or_none(study)
    return ((space.params_from_dict(info.params, best) if best else info.params()), trial_counts(study, budget.trials),
            search_time(study))


def _spec(split: RetrievalSplit, kind: str) -> FusionSpec:
    source = split.data.pooled if kind == "pooled" else split.data.tokens
    return FusionSpec({m: source[m].shape[-1] for m in (IMAGE, TEXT)},
                      {m: split.data.tokens[m].shape[1] for m in (IMAGE, TEXT)}, 2)


def _predictions(replicate: int, seed: int, ranked: Ranked, split: RetrievalSplit) -> pd.DataFrame:
    clusters = np.asarray(split.cluster)
    return pd.concat([
        pd.DataFrame({"replicate": replicate, "seed": seed, "direction": "i2t", "query": np.arange(len(ranked.i2t)),
                      "rank": ranked.i2t, "cluster": clusters}),
        pd.DataFrame({"replicate": replicate, "seed": seed, "direction": "t2i", "query": np.arange(len(ranked.t2i)),
                      "rank": ranked.t2i, "cluster": clusters[split.caption_group.cpu().numpy()]}),
    ])


class RetrievalRun:
    """The cells of one retrieval dataset, sharing the dual encoders trained per (replicate, evaluation seed)."""

    def __init__(self, data: TaskData, tables: TaskTables | RetrievalIndex, ctx: CellContext) -> None:
        self.data, self.ctx = data, ctx
        self.index = tables if isinstance(tables, RetrievalIndex) else RetrievalIndex.of(tables)
        self.splits = retrieval_splits(data, self.index, ctx.device)
        self._dual: dict[tuple[int, int], tuple[DualResult, Ranked, Ranked]] = {}
        self._dual_params: dict[int, DualEncoderParams] = {}

    def dual_params(self, replicate: int) -> DualEncoderParams:
        if replicate not in self._dual_params:  # the dual encoder cell ran in an earlier process: read its study
            best = best_params_or_none(_study(f"{self.data.config.name}/{BASE}", self.data, self.ctx, replicate))
            self._dual_params[replicate] = space.params_from_dict(DualEncoderParams, best) if best else DualEncoderParams()
        return self._dual_params[replicate]

    def dual(self, replicate: int, seed: int) -> tuple[DualResult, Ranked, Ranked]:
        """The dual encoder of a (replicate, evaluation seed) and its (test, val) ranks, trained once per run."""
        if (replicate, seed) not in self._dual:
            res = train_dual_encoder(self.splits["train"], self.splits["val"], self.dual_params(replicate),
                                     self.ctx.train, seed)
            self._dual[replicate, seed] = (res, rank_split(res.model, self.splits["test"]),
                                           rank_split(res.model, self.splits["val"]))
        return self._dual[replicate, seed]

    def pairs(self, kind: str, replicate: int, seed: int) -> tuple[Batch, Batch]:
        """(train, validation) matching pairs for a re-ranker: random mismatched captions, or (suite setting
        `rerank_negatives: hard`) hard ones from the top `rerank_k` of the dual encoder of (replicate, seed)."""
        train, val = self.splits["train"], self.splits["val"]
        if self.ctx.rerank_negatives != "hard":
            return matching_pairs(train, kind, seed), matching_pairs(val, kind, seed + 1)
        dual = self.dual(replicate, seed)[0].model
        k = self.ctx.rerank_k
        return hard_matching_pairs(train, kind, seed, dual, k), hard_matching_pairs(val, kind, seed + 1, dual, k)

    def execute(self, cells: list[RetrievalCell]) -> Iterator[RetrievalOutcome]:
        """Yield (cell, records or the exception it raised), the dual encoder first, all in this process."""
        for cell in sorted(cells, key=lambda c: c.strategy != BASE):
            try:
                yield cell, self.run_cell(cell)
            except UsageError:
                raise
            except Exception as exc:
                yield cell, exc

    def run_cell(self, cell: RetrievalCell) -> list[Record]:
        deadline.check(f"cell {cell.dataset}/{cell.strategy}")  # its searches check again before each trial
        records: list[Record] = []
        frames: list[pd.DataFrame] = []
        throughput: Throughput | None = None
        for replicate in range(self.ctx.budget.replicates):
            throughput = self._replicate(cell, replicate, records, frames, throughput)
        write_predictions(frames, prediction_path(self.ctx.out_dir, cell.dataset, cell.strategy))
        return records

    def _replicate(self, cell: RetrievalCell, replicate: int, records: list[Record], frames: list[pd.DataFrame],
                   throughput: Throughput | None) -> Throughput | None:
        """Search replicate `replicate` of the cell, then its K evaluation seeds (appended to records/frames)."""
        ctx, test = self.ctx, self.splits["test"]
        budget = ctx.budget.for_replicate(replicate)
        n_queries = test.n_images + test.n_captions
        if cell.info is None:
            self._dual_params[replicate], counts, search_s = _search_dual(self.splits, self.data, ctx, replicate)
            params: dict = dataclasses.asdict(self._dual_params[replicate])
            family = "baseline"
        else:
            spec = _spec(test, cell.info.input_kind)
            # search pairs: seeds 0/1 as before; hard negatives come from the replicate's first evaluation seed
            search_pairs = (self.pairs(cell.info.input_kind, replicate, budget.eval_seeds[0]) if
                            ctx.rerank_negatives == "hard" else self.pairs(cell.info.input_kind, replicate, 0))
            r_params, counts, search_s = _search_reranker(cell, search_pairs, spec, self.data, ctx, replicate)
            params = {"reranker": dataclasses.asdict(r_params),
                      "dual_encoder": dataclasses.asdict(self.dual_params(replicate)), "rerank_k": ctx.rerank_k,
                      "rerank_negatives": ctx.rerank_negatives}
            family = cell.info.family
        store = SeedStore(ctx.out_dir, cell.dataset, cell.strategy)
        key = {seed: seed_key({"fingerprint": self.data.fingerprint, "task": "retrieval", "strategy": cell.strategy,
                               "replicate": replicate, "seed": seed, "params": params,
                               "train": dataclasses.asdict(ctx.train)}) for seed in budget.eval_seeds}
        here = device_name(ctx.device)  # a seed scored on another device is retrained: one device per cell
        code = retrieval_code(cell.info)
        kept = {seed: stored for seed in budget.eval_seeds if (stored := store.load(replicate, seed, key[seed], here, code))}
        if kept:
            log.info("  %s replicate %d: %d of %d evaluation seed(s) kept from an earlier process; training %d",
                     cell.strategy, replicate, len(kept), len(budget.eval_seeds), len(budget.eval_seeds) - len(kept))
        # the cell's throughput, measured with its first seed: a kept seed's is taken before any seed trains, so that
        # a retrained seed before a kept one (its entry unreadable) does not measure a second one
        throughput = throughput or next((s.record.throughput for s in kept.values() if s.record.throughput), None)
        for seed in budget.eval_seeds:
            if seed in kept:  # scored by an earlier process of this run: its record and ranks as stored
                records.append(kept[seed].record)
                frames.append(kept[seed].predictions)
                continue
            deadline.check(f"evaluation seed {seed} of {cell.dataset}/{cell.strategy}")  # the seeds before it are stored
            t0, throughput_s = time.perf_counter(), 0.0
            dual, test_ranks, val_ranks = self.dual(replicate, seed)
            train_s, n_params, best_epoch = dual.train_seconds, sum(p.numel() for p in dual.model.parameters()), dual.best_epoch
            val_score = dual.val_rsum
            if cell.info is None:
                if throughput is None:
                    t1 = time.perf_counter()
                    throughput = time_pipeline(partial(rank_split, dual.model, test), n_queries, ctx.device,
                                               dual.train_samples_per_s, batch_size=1024)
                    throughput_s = time.perf_counter() - t1
            else:
                torch.manual_seed(seed)
                model = cell.info.build(spec, r_params).to(ctx.device)
                res = train_model(model, *self.pairs(cell.info.input_kind, replicate, seed), ctx.train, PAIR_METRIC, seed)
                base_ranks = test_ranks
                test_ranks = rerank(dual.model, model, test, base_ranks, ctx.rerank_k)
                val_score = rerank(dual.model, model, self.splits["val"], val_ranks, ctx.rerank_k).scores.rsum
                train_s, best_epoch = res.train_seconds, res.best_epoch
                n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
                if throughput is None:
                    t1 = time.perf_counter()
                    throughput = time_pipeline(partial(rerank, dual.model, model, test, base_ranks, ctx.rerank_k),
                                               n_queries, ctx.device, res.train_samples_per_s, batch_size=ctx.rerank_k)
                    throughput_s = time.perf_counter() - t1
            scores = test_ranks.scores.as_metrics()
            frame = _predictions(replicate, seed, test_ranks, test)
            record = Record(
                dataset=cell.dataset, task="retrieval", strategy=cell.strategy, family=family,
                modalities=[IMAGE, TEXT], seed=seed, replicate=replicate, status="ok", params=params, metrics=scores,
                main_metric_name="rsum", main_metric=scores["rsum"], val_main_metric=val_score,
                **counts.record_fields(), search_timeout_s=budget.timeout_s,
                **search_s.record_fields(),
                sampler=sampler_settings(budget.search_seed), pruner=pruner_settings(),
                train_seconds=train_s, best_epoch=best_epoch, params_count=n_params, device=device_name(ctx.device),
                encoders=dict(self.data.encoders), data_fingerprint=self.data.fingerprint, throughput=throughput, code_id=code,
                # wall seconds of this seed (its dual encoder's fit when not cached yet, the re-ranker's
                # fit, ranking, scoring) and of the once-per-cell throughput timing: `timing status` sums them
                phase_seconds={"evaluation": round(time.perf_counter() - t0 - throughput_s, 4),
                               "throughput": round(throughput_s, 4)},
            )
            store.save(replicate, seed, key[seed], record, frame)  # survives a stop or a kill from here on
            records.append(record)
            frames.append(frame)
        return throughput
