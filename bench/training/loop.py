"""Training a strategy on cached features.

Features stay resident on the device as tensors; a batch is an index into them, so the loop has
no per-batch decoding, no DataLoader and no host↔device copies. Early stopping (bench/training/
stopping.py: validation loss, patience in evaluations and optimiser steps, a minimum number of
steps, min-delta) keeps the state of the best evaluation. `on_epoch(epoch, val_metric)` lets optuna
prune (it may raise).
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fusebench.core import metrics as metric_lib
from fusebench.strategies.base import FusionModel
from fusebench.strategies.training_options import GradientBlender, TrainingOptions, drop_modalities
from fusebench.training.dropout import DropoutClock, restore_dropout, swap_dropout
from fusebench.training.stopping import EarlyStopper, Monitor, StopRule, nll

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """The fixed (not searched) part of training, identical for every strategy of a suite."""

    epochs: int = 30  # raised when fewer epochs than `min_steps` optimiser steps would allow
    patience: int = 5  # evaluations (one per epoch) without improvement before stopping ...
    batch_size: int = 128
    eval_batch_size: int = 1024
    modality_dropout: float = 0.0  # see strategies.training_options
    gradient_blending: bool = False
    amp_bf16: bool = False  # bf16 autocast of the training forward/loss (meant for CUDA; runs on CPU too)
    compile: bool = False  # torch.compile the model's forward for training (needs a C++ compiler on CPU)
    patience_steps: int = 0  # ... and at least this many optimiser steps without improvement
    min_steps: int = 0  # never stop before this many optimiser steps (the epoch budget grows to fit them)
    min_delta: float = 0.0  # an improvement of the monitored quantity must exceed this
    monitor: Monitor = "val_loss"  # the early-stopping quantity: validation loss (smooth) or the main metric
    accumulate: int = 1  # gradient accumulation: each batch runs as this many micro-batches, one optimiser step

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 1 or self.accumulate < 1:
            raise ValueError(f"epochs, batch_size, patience and accumulate must be >= 1: {self}")
        TrainingOptions(self.modality_dropout, self.gradient_blending)  # validates
        _ = self.stop_rule  # validates

    @property
    def stop_rule(self) -> StopRule:
        return StopRule(self.patience, self.patience_steps, self.min_steps, self.min_delta, self.monitor)


@dataclass(frozen=True)
class Batch:
    """Inputs keyed by modality and labels, already on the training device."""

    inputs: Mapping[str, Tensor]
    labels: Tensor

    def __len__(self) -> int:
        return self.labels.shape[0]

    def take(self, index: Tensor) -> Batch:
        return Batch({k: v[index] for k, v in self.inputs.items()}, self.labels[index])


@dataclass
class TrainResult:
    model: FusionModel
    val_metric: float  # the main metric at the restored (best) evaluation
    best_epoch: int
    epochs_run: int
    train_seconds: float  # the epochs' training loops only (synchronised); validation is not in it
    train_samples: int
    history: list[float] = field(default_factory=list)
    val_seconds: float = 0.0  # the per-epoch validation passes, timed apart
    best_step: int = 0  # optimiser steps taken when the restored weights were evaluated
    steps_run: int = 0
    val_loss: float = float("nan")  # validation loss at the restored evaluation

    @property
    def train_samples_per_s(self) -> float:
        return self.train_samples / self.train_seconds if self.train_seconds > 0 else float("nan")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


@torch.inference_mode()
def predict_proba(model: FusionModel, inputs: Mapping[str, Tensor], batch_size: int = 1024) -> np.ndarray:
    """Class probabilities `[N, C]` as numpy, evaluated in batches in eval mode."""
    model.eval()
    n = next(iter(inputs.values())).shape[0]
    out = [
        model({k: v[i : i + batch_size] for k, v in inputs.items()}).float().softmax(-1).cpu()
        for i in range(0, n, batch_size)
    ]
    return torch.cat(out).numpy()


def loss_of(model: FusionModel, batch: Batch) -> Tensor:
    """A strategy may define `training_loss(inputs, labels)` (stacking, auxiliary heads); else CE."""
    custom = getattr(model, "training_loss", None)
    if custom is not None:
        return custom(batch.inputs, batch.labels)
    return F.cross_entropy(model(batch.inputs), batch.labels)


def _micro_batches(batch: Batch, parts: int) -> list[Batch]:
    """`batch` as up to `parts` consecutive micro-batches (gradient accumulation); itself when parts == 1."""
    if parts <= 1 or len(batch) < 2:
        return [batch]
    bounds = torch.linspace(0, len(batch), min(parts, len(batch)) + 1).round().long().tolist()
    return [batch.take(torch.arange(a, b, device=batch.labels.device)) for a, b in itertools.pairwise(bounds) if b > a]


def backward_batch(model: FusionModel, batch: Batch, cfg: TrainConfig, blender: GradientBlender | None,
                   step_model: FusionModel) -> None:
    """Accumulate the gradient of `batch`'s mean loss, in `cfg.accumulate` micro-batches: each
    micro-batch's mean loss is weighted by its share of the rows, so the sum is the batch mean."""
    device = batch.labels.device
    for part in _micro_batches(batch, cfg.accumulate):
        with _autocast(device, cfg.amp_bf16):
            loss = blender.loss(model, part.inputs, part.labels) if blender else loss_of(step_model, part)
        (loss * (len(part) / len(batch))).backward()


def train_model(
    model: FusionModel,
    train: Batch,
    val: Batch,
    cfg: TrainConfig,
    main_metric: str,
    seed: int,
    on_epoch: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train `model` in place with AdamW on `train`, select the best epoch on `val`'s main metric.

    While it trains, its `nn.Dropout` modules are keyed by `seed` (bench/training/dropout.py), so the
    fit of a seed does not depend on what trained before it and equals member `seed` of a batched fit."""
    clock = DropoutClock()
    swapped = [] if cfg.compile else swap_dropout(model, seed, clock)  # compiled graphs keep nn.Dropout
    try:
        return _train(model, train, val, cfg, main_metric, seed, on_epoch, clock)
    finally:
        restore_dropout(swapped)


def _train(model: FusionModel, train: Batch, val: Batch, cfg: TrainConfig, main_metric: str, seed: int,
           on_epoch: Callable[[int, float], None] | None, clock: DropoutClock) -> TrainResult:
    """`train_model`'s body; `clock.tick(step)` before each optimiser step's forward."""
    device = train.labels.device
    metric = metric_lib.METRICS.get(main_metric)
    val_labels = val.labels.cpu().numpy()
    model.fit_prior(train.labels)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:  # baselines that do not learn
        score = metric(val_labels, predict_proba(model, val.inputs, cfg.eval_batch_size))
        return TrainResult(model, score, 0, 0, 0.0, 0, [score])

    hp = model.params
    groups = getattr(model, "param_groups", None)  # fine-tuning: separate encoder and head learning rates
    optimizer = torch.optim.AdamW(groups(hp.lr, hp.weight_decay) if groups else params, lr=hp.lr,
                                  weight_decay=hp.weight_decay)
    generator = torch.Generator(device=device).manual_seed(seed)
    n = len(train)
    blender = GradientBlender(list(train.inputs)) if cfg.gradient_blending else None
    blend_probe = train.take(torch.arange(min(n, 2048), device=device))
    stopper = EarlyStopper(cfg.stop_rule)
    best_score, best_loss, best_epoch, best_state = -float("inf"), float("nan"), -1, None
    history: list[float] = []
    train_seconds, val_seconds, samples, steps = 0.0, 0.0, 0, 0
    steps_per_epoch = sum(1 for start in range(0, n, cfg.batch_size) if min(cfg.batch_size, n - start) >= 2 or n < 2)
    max_epochs = cfg.stop_rule.epochs_for(cfg.epochs, steps_per_epoch)
    if cfg.amp_bf16 and device.type != "cuda":
        log.debug("amp_bf16 on %s: CPU bf16 autocast (its gain depends on the CPU)", device)
    step_model: FusionModel = torch.compile(model) if cfg.compile else model
    inputs, labels = train.inputs, train.labels
    if cfg.compile:  # compile (forward + backward graphs) outside the timed loop; no optimizer step
        model.train()
        warm = train.take(torch.arange(min(n, cfg.batch_size), device=device))
        with _autocast(device, cfg.amp_bf16):
            loss_of(step_model, warm).backward()
        optimizer.zero_grad(set_to_none=True)
    epoch = 0
    for epoch in range(max_epochs):
        model.train()
        _sync(device)
        t0 = time.perf_counter()
        order = torch.randperm(n, device=device, generator=generator)
        for start in range(0, n, cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            if idx.numel() < 2 and n >= 2:  # BatchNorm-free, but a 1-row batch is mostly noise
                continue
            batch = Batch({k: v[idx] for k, v in inputs.items()}, labels[idx])
            if cfg.modality_dropout > 0:
                batch = Batch(drop_modalities(batch.inputs, cfg.modality_dropout, generator), batch.labels)
            optimizer.zero_grad(set_to_none=True)
            clock.tick(steps)
            backward_batch(model, batch, cfg, blender, step_model)
            optimizer.step()
            samples += idx.numel()
            steps += 1
        _sync(device)
        t1 = time.perf_counter()
        train_seconds += t1 - t0
        if blender is not None:
            blender.update(model, (blend_probe.inputs, blend_probe.labels), (val.inputs, val.labels))
        probs = predict_proba(model, val.inputs, cfg.eval_batch_size)
        score, loss = metric(val_labels, probs), nll(val_labels, probs)
        val_seconds += time.perf_counter() - t1
        if not np.isfinite(score):
            score = -float("inf")
        history.append(float(score))
        if on_epoch is not None:
            on_epoch(epoch, float(score))
        if stopper.update(loss, float(score), steps):
            best_score, best_loss, best_epoch = score, loss, epoch
            best_state = copy.deepcopy(model.state_dict())
        elif stopper.should_stop(steps):
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    return TrainResult(model, float(best_score), best_epoch, epoch + 1, train_seconds, samples, history, val_seconds,
                       best_step=stopper.best_step, steps_run=steps, val_loss=float(best_loss))
