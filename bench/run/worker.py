"""`fusebench worker`: join an existing study and run its trials until the budget is finished.

The run that creates a study (`fusebench run`, or `fusebench run --prepare-only`) stores what the
objective needs in the study's user attr `fusebench` (bench.cell.study_attrs): dataset, suite size,
strategy, views, training config, budget, data fingerprint, encoder ids, data root. A worker reads
it, builds the same tables from the same data root (`--data-dir` overrides), encodes through the
same feature cache, refuses to run when the data fingerprint or an encoder id differs, and then
runs the same search loop as the owner (`bench.run.cell.search`: one trial at a time, or rounds of
the study's `trial_batch` trials trained together) — so the number of finished
(COMPLETE + PRUNED) trials across all processes is exactly the budget. It exits 0 when the study
has its budget of finished trials, or when the study's search cap is spent with nothing left
running. The owner meanwhile waits for all trials, then evaluates the best params on its seeds.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
import torch

from fusebench.config import catalog
from fusebench.core import progress
from fusebench.core.encmode import EncoderMode, FineTuneSettings
from fusebench.core.errors import UsageError
from fusebench.core.paths import cache_root, resolve_data_root
from fusebench.data.builders import build_tables
from fusebench.features.cache import FeatureCache
from fusebench.features.extract import encode_task
from fusebench.run.cell import STUDY_ATTR, Cell, progress_key, search, study_name
from fusebench.search.storage import open_storage, redact
from fusebench.search.study import Budget, cap_clock_for, n_done, open_study
from fusebench.strategies import STRATEGIES
from fusebench.training.finetune.setup import attach_raw
from fusebench.training.loop import TrainConfig

if TYPE_CHECKING:
    from fusebench.run.runner import RunConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerSummary:
    study: str
    trials_here: int  # trials this process finished
    finished: int  # finished trials of the study when the worker left
    budget: int
    seconds: float


def _load(study_name: str, storage_url: str, search_seed: int = 0) -> optuna.Study:
    storage = open_storage(storage_url)
    try:
        names = optuna.get_all_study_names(storage)
    except UsageError:
        raise
    except Exception as exc:
        raise UsageError(f"--storage {redact(storage_url)}: cannot list its studies: {type(exc).__name__}: {exc}") from None
    if study_name not in names:
        close = difflib.get_close_matches(study_name, names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UsageError(
            f"no study {study_name!r} in {redact(storage_url)}.{hint} Studies there: {sorted(names) or 'none'}. "
            "Create it first with `fusebench run ... --storage URL` (or `--prepare-only`)."
        )
    study = open_study(study_name, storage, search_seed, create=False)
    if STUDY_ATTR not in study.user_attrs:
        raise UsageError(f"study {study_name!r} was not created by fusebench run (no {STUDY_ATTR!r} user attr)")
    # Reload with the study's own search seed, so this process samples exactly as the owner would.
    return open_study(study_name, storage, int(study.user_attrs[STUDY_ATTR]["budget"]["search_seed"]), create=False)


def run_worker(study_name: str, storage_url: str, device: str = "auto", data_dir: str | None = None) -> WorkerSummary:
    from fusebench.run.runner import resolve_device

    started = time.perf_counter()
    study = _load(study_name, storage_url)
    attrs = study.user_attrs[STUDY_ATTR]
    if attrs.get("task") == "retrieval":
        raise UsageError(f"study {study_name!r} belongs to a retrieval task, whose cells run in the owning "
                         "`fusebench run` process (docs/retrieval.md); run that command instead of a worker")
    budget = Budget(**attrs["budget"])
    if n_done(study) >= budget.trials:
        log.info("study %s already has its %d finished trials", study_name, budget.trials)
        return WorkerSummary(study_name, 0, n_done(study), budget.trials, time.perf_counter() - started)
    dev = resolve_device(device)
    # This process's seconds count on its own device's clock, not on the owning run's: a GPU worker on
    # a study a CPU run made counted its CPU seconds, a fraction of the device time its trials took.
    # The study then says which clocks counted it (`search_clock`, e.g. "cpu+wall").
    budget = dataclasses.replace(budget, cap_clock=cap_clock_for(dev))
    root = resolve_data_root(data_dir or (attrs["data_root"] if Path(attrs["data_root"]).is_dir() else None))
    cfg = catalog.get_dataset(attrs["dataset"])
    tables = build_tables(cfg, root, attrs["size"])
    data = encode_task(cfg, tables, FeatureCache(cache_root()), dev, views=set(attrs["views"]))
    if data.fingerprint != attrs["data_fingerprint"]:
        raise UsageError(f"study {study_name!r}: data fingerprint here {data.fingerprint} differs from the study's "
                         f"{attrs['data_fingerprint']} (data root {root}); use the same data bundle and code version")
    encoders = {v: data.encoders[v] for v in attrs["views"]}
    if encoders != attrs["encoders"]:
        raise UsageError(f"study {study_name!r}: encoders here {encoders} differ from the study's {attrs['encoders']}")
    info = STRATEGIES.get(attrs["registry_name"])
    mode = EncoderMode.parse(attrs.get("encoder_mode", "frozen"))
    finetune = FineTuneSettings(**attrs.get("finetune", {}))
    if not mode.frozen:  # the raw inputs of the fine-tuned views, as the owning run prepared them
        data = attach_raw(data, tables, attrs["views"], finetune, dev)
    cell = Cell(attrs["dataset"], attrs["strategy"], info, tuple(attrs["views"]), mode)
    threads = torch.get_num_threads()
    if dev.type == "cpu":
        from fusebench.run.runner import train_threads

        torch.set_num_threads(train_threads())
    key = progress_key(cell)  # the objective advances it once per trial run here
    progress.start(key, f"worker {study_name}", budget.trials, "trials", status=f"{n_done(study)} finished before")
    progress.skip(key, n_done(study))
    try:
        study, _ = search(study, cell, data, TrainConfig(**attrs["train"]), budget, dev, int(attrs.get("trial_batch", 1)),
                          finetune)
    finally:
        progress.finish(key)
        torch.set_num_threads(threads)  # called in-process (tests, notebooks), the caller keeps its threads
    done_states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    here = sum(1 for t in study.get_trials(deepcopy=False, states=done_states)
               if t.user_attrs.get("pid") == os.getpid() and t.user_attrs.get("host") == socket.gethostname())
    return WorkerSummary(study_name, here, n_done(study), budget.trials, time.perf_counter() - started)


def prepare_studies(cfg: RunConfig) -> list[str]:
    """Create the studies of a run config (a `bench.runner.RunConfig` with `storage`) with their user
    attrs, by the run's own code path, without searching; returns the study names."""
    from fusebench.run.runner import run
    from fusebench.run.selection import expand_cells

    run(dataclasses.replace(cfg, prepare_only=True))
    names = []
    for ds in cfg.suite.datasets:
        views = sorted(catalog.get_dataset(ds).views)
        names += [study_name(c, r) for c in expand_cells(ds, views, cfg.strategy_names)
                  if c.info.trainable for r in range(cfg.suite.replicates)]
    return names
