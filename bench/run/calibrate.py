"""`fusebench calibrate`: an A/A experiment that checks, on any dataset, that the paired test rejects
at its nominal rate and its interval covers the truth.

Each repeat searches the SAME strategy twice as two independent cells (arms A and B), each with R
search replicates (distinct search seeds) × K evaluation seeds, exactly as a benchmark cell is run
(`run.cell.run_cell`), then tests A vs B. As A and B are the same strategy, the true difference is
0: the rejection rate at α = 0.05 should be ≤ 0.05 (plus Monte-Carlo error) and the 95 % interval of
Δ should cover 0 in ≥ 95 % of repeats. For contrast every repeat also reports what the pre-issue-10
protocol would have said: one search per cell (replicate 0 only), test rows treated as independent,
seed variance only (`results.stats.paired_test(..., allow_r1=True)` on row-level clusters).

The data are built and encoded once; every arm × replicate gets its own optuna journal under OUT.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from fusebench.config import catalog
from fusebench.core.errors import UsageError
from fusebench.core.paths import cache_root, resolve_data_root
from fusebench.data.builders import build_tables
from fusebench.features.cache import FeatureCache
from fusebench.features.extract import encode_task
from fusebench.measure.timing import TimingConfig
from fusebench.results.resample import Predictions, prediction_path
from fusebench.results.stats import ALPHA, paired_test
from fusebench.run.cell import CellContext, run_cell
from fusebench.run.selection import expand_cells, selected_strategy
from fusebench.search.storage import default_url
from fusebench.search.study import Budget, cap_clock_for
from fusebench.training.loop import TrainConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CalibrateConfig:
    """What to calibrate and under which budget (defaults: the `tiny` suite's, R = 3 replicates)."""

    dataset: str
    strategy: str
    out: Path
    size: str = "tiny"
    repeats: int = 20
    replicates: int = 3
    trials: int = 2
    seeds: int = 2
    epochs: int = 3
    patience: int = 2
    batch_size: int = 32
    timeout_s: float = 60.0
    data_dir: str | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        for name in ("repeats", "trials", "seeds", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise UsageError(f"calibrate: --{name} must be >= 1, got {getattr(self, name)}")
        if self.replicates < 2:
            raise UsageError(f"calibrate: --replicates must be >= 2 (with 1 the search variance cannot be estimated and "
                             f"no test is run), got {self.replicates}")


@dataclass(frozen=True)
class RepeatResult:
    repeat: int
    delta: float
    ci95: tuple[float, float]
    p: float | None
    p_one_search: float | None  # the pre-issue-10 protocol on the same runs
    seconds: float


@dataclass(frozen=True)
class Calibration:
    config: dict
    metric: str
    repeats: list[RepeatResult] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.repeats)

    def rate(self, attr: str) -> float:
        ps = [getattr(r, attr) for r in self.repeats if getattr(r, attr) is not None]
        return float(np.mean([p < ALPHA for p in ps])) if ps else float("nan")

    @property
    def coverage(self) -> float:
        return float(np.mean([r.ci95[0] <= 0.0 <= r.ci95[1] for r in self.repeats])) if self.repeats else float("nan")

    def summary(self) -> dict:
        return {"n_repeats": self.n, "alpha": ALPHA, "metric": self.metric,
                "rejection_rate": self.rate("p"), "ci95_coverage_of_zero": self.coverage,
                "rejection_rate_one_search_protocol": self.rate("p_one_search"),
                "seconds_per_repeat": float(np.mean([r.seconds for r in self.repeats])) if self.repeats else None,
                "config": self.config, "repeats": [asdict(r) for r in self.repeats]}

    def text(self) -> str:
        c = self.config
        return "\n".join([
            f"A/A calibration: {c['strategy']} on {c['dataset']} ({c['size']}), {self.n} repeats, "
            f"R={c['replicates']} search replicates × K={c['seeds']} seeds per arm, metric {self.metric}",
            f"  rejection rate at α = {ALPHA}: {self.rate('p'):.3f}   (nominal {ALPHA}; this protocol)",
            f"  95% CI of Δ covers 0:        {self.coverage:.3f}   (nominal 0.95)",
            f"  rejection rate, one search per cell, rows independent, seed variance only (pre-issue-10): "
            f"{self.rate('p_one_search'):.3f}",
            f"  {np.mean([r.seconds for r in self.repeats]):.1f}s per repeat" if self.repeats else "",
        ])


def _device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was requested but torch sees no CUDA device")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


def calibrate(cfg: CalibrateConfig) -> Calibration:
    ds_cfg = catalog.get_dataset(cfg.dataset)
    if ds_cfg.task == "retrieval":
        raise UsageError(f"calibrate: {cfg.dataset} is a retrieval task; calibrate A/A-tests classification and "
                         "matching tasks (e.g. --dataset flickr8k-itm)")
    selected_strategy(cfg.strategy)  # a row's name that is not a selection (`rerank:concat`) says what to give
    cells = [c for c in expand_cells(cfg.dataset, sorted(ds_cfg.views), [cfg.strategy.split(":")[0]])
             if c.strategy == cfg.strategy]
    if not cells:
        raise UsageError(f"calibrate: strategy {cfg.strategy!r} makes no cell on {cfg.dataset} "
                         f"(views {sorted(ds_cfg.views)}; per-view strategies are named like unimodal:VIEW)")
    cell = cells[0]
    if not cell.info.trainable:
        raise UsageError(f"calibrate: {cfg.strategy!r} is not searched (a fixed baseline): an A/A test needs a search")
    device = _device(cfg.device)
    root = resolve_data_root(cfg.data_dir)
    data = encode_task(ds_cfg, build_tables(ds_cfg, root, cfg.size), FeatureCache(cache_root()), device)
    train = TrainConfig(cfg.epochs, cfg.patience, cfg.batch_size)
    result = Calibration(asdict(cfg) | {"out": str(cfg.out)}, ds_cfg.main_metric)
    for i in range(cfg.repeats):
        t0 = time.perf_counter()
        arms = []
        for arm in range(2):
            parts = []
            for r in range(cfg.replicates):
                unit = cfg.out / f"repeat{i:03d}" / f"arm{arm}" / f"replicate{r}"
                unit.mkdir(parents=True, exist_ok=True)
                ctx = CellContext(budget=Budget(cfg.trials, cfg.timeout_s, cfg.seeds, 10_000 + 100 * i + 10 * arm + r,
                                                                cap_clock=cap_clock_for(device)),
                                  train=train, timing=TimingConfig(warmup=1, repetitions=3, batch_size=max(cfg.batch_size, 256)),
                                  device=device, storage=default_url(unit), out_dir=unit, size=cfg.size,
                                  data_root=str(root.resolve()))
                run_cell(cell, data, ctx)
                parts.append(Predictions.read(prediction_path(unit, cfg.dataset, cell.strategy)))
            arms.append(Predictions.stack(parts))
        now = paired_test(arms[0], arms[1], ds_cfg.main_metric)
        old = paired_test(arms[0].replicate(0).without_clusters(), arms[1].replicate(0).without_clusters(),
                          ds_cfg.main_metric, allow_r1=True)
        if now is None:
            raise RuntimeError(f"calibrate: the two arms share fewer than 2 test examples on {cfg.dataset}")
        rep = RepeatResult(i, now.delta, now.ci95, now.p, old.p if old else None, time.perf_counter() - t0)
        log.info("repeat %d/%d: Δ=%+.4f [%+.4f, %+.4f] p=%s (one-search protocol p=%s) %.1fs", i + 1, cfg.repeats,
                 rep.delta, *rep.ci95, rep.p, rep.p_one_search, rep.seconds)
        result.repeats.append(rep)
    return result
