"""Many models as one: the K evaluation seeds of a cell trained as one batched model.

Small fusion heads leave a CPU (and far more a GPU) idle between tiny kernels, so training K copies
one after another costs K times the launch overhead. Here the K members' parameters are stacked
(`torch.func.stack_module_state`) and one `vmap`-ed `functional_call` computes every member's loss
on its own batch; the summed loss gives each member exactly its own gradient, and AdamW, being
element-wise, updates each member exactly as K separate optimisers would.

What stays per member, so that member k is the sequential fit of seed k:
- initialisation: member k is built after `torch.manual_seed(seed_k)`, as in the sequential loop;
- data order: member k's permutation comes from its own generator seeded with `seed_k`;
- dropout: `vmap(randomness="different")` draws an independent mask per member (the masks are not
  the sequential run's masks, so with dropout > 0 members agree in distribution, not bitwise);
- early stopping: each member has its own `EarlyStopper` (the sequential loop's rule, in optimiser
  steps), best state and patience; a member that stops is frozen
  (its loss is masked to zero and its best state is what it returns), not dropped; the batch stops
  when every member has.

A configuration or strategy that cannot be batched (modality dropout and gradient blending draw
from the sequential generator; `torch.compile`; a forward that `vmap` cannot trace) falls back to
sequential training, and the reason is returned so that records and logs can say so.
"""

from __future__ import annotations

import copy
import logging
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from fusebench.core import metrics as metric_lib
from fusebench.strategies.base import FusionModel
from fusebench.training.loop import Batch, TrainConfig, TrainResult, loss_of, train_model
from fusebench.training.stopping import EarlyStopper, nll

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SeedFits:
    """The K fitted members, in seed order, and how they were trained."""

    results: list[TrainResult]
    batched: bool
    reason: str = ""  # why the members were trained one after another, when they were
    seconds: float = 0.0  # wall time of the whole fit (all members)


class _Functional(nn.Module):
    """`forward(inputs, labels=None)`: the member's training loss, or its logits when labels is None."""

    def __init__(self, model: FusionModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: dict[str, Tensor], labels: Tensor | None = None) -> Tensor:
        if labels is None:
            return self.model(inputs).float()
        return loss_of(self.model, Batch(inputs, labels))


def not_batchable(models: Sequence[FusionModel], cfg: TrainConfig) -> str:
    """Why these members cannot train as one batched model ("" when they can)."""
    if len(models) < 2:
        return "a single member"
    if cfg.modality_dropout > 0 or cfg.gradient_blending:
        return "modality dropout and gradient blending draw from the sequential loop's generator"
    if cfg.compile:
        return "torch.compile of a vmap-ed functional model is not supported here"
    if not any(p.requires_grad for p in models[0].parameters()):
        return "nothing to train"
    shapes = [{k: tuple(v.shape) for k, v in m.state_dict().items()} for m in models]
    if any(s != shapes[0] for s in shapes[1:]):
        return "members differ in shape"
    return ""


def fit_seeds(
    build: Callable[[int], FusionModel],
    seeds: Sequence[int],
    train: Batch,
    val: Batch,
    cfg: TrainConfig,
    main_metric: str,
    batched: bool = True,
) -> SeedFits:
    """Build one member per seed (`build(seed)` seeds torch itself) and fit them all, batched when
    possible. Each result is what `train_model(build(seed), ..., seed)` would return for that seed."""
    t0 = time.perf_counter()
    models = [build(seed) for seed in seeds]
    reason = not_batchable(models, cfg) if batched else "batching switched off"
    if not reason:
        try:
            with warnings.catch_warnings():  # torch's "no batching rule, falling back to a loop" notes
                warnings.filterwarnings("ignore", message=".*batching rule.*", category=UserWarning)
                results = _fit_batched(models, list(seeds), train, val, cfg, main_metric)
            return SeedFits(results, True, "", time.perf_counter() - t0)
        except (RuntimeError, NotImplementedError, ValueError) as exc:  # a forward vmap cannot trace
            reason = f"vmap failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            log.info("training %d seeds one after another (%s)", len(models), reason)
            models = [build(seed) for seed in seeds]  # a failed batched step may have touched them
    results = [train_model(m, train, val, cfg, main_metric, s) for m, s in zip(models, seeds)]
    return SeedFits(results, False, reason, time.perf_counter() - t0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _fit_batched(
    models: list[FusionModel], seeds: list[int], train: Batch, val: Batch, cfg: TrainConfig, main_metric: str
) -> list[TrainResult]:
    device = train.labels.device
    k_members = len(models)
    metric = metric_lib.METRICS.get(main_metric)
    val_labels = val.labels.cpu().numpy()
    for m in models:
        m.fit_prior(train.labels)
    wrapped = [_Functional(m) for m in models]
    params, buffers = stack_module_state(wrapped)
    skeleton = copy.deepcopy(wrapped[0])
    trainable = {k: v for k, v in params.items() if v.requires_grad}
    frozen = {k: v for k, v in params.items() if not v.requires_grad}
    hp = models[0].params

    optimizer = torch.optim.AdamW(list(trainable.values()), lr=hp.lr, weight_decay=hp.weight_decay)
    generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
    n = len(train)
    batched_loss = vmap(
        lambda p, f, b, x, y: functional_call(skeleton, ({**p, **f}, b), (x, y)),
        in_dims=(0, 0, 0, 0, 0), randomness="different",
    )
    batched_logits = vmap(
        lambda p, f, b, x: functional_call(skeleton, ({**p, **f}, b), (x,)),
        in_dims=(0, 0, 0, None), randomness="different",
    )
    keys = set(models[0].state_dict())
    stoppers = [EarlyStopper(cfg.stop_rule) for _ in models]
    best: list[tuple[float, float, int, dict | None]] = [(-float("inf"), float("nan"), -1, None)] * k_members
    histories: list[list[float]] = [[] for _ in range(k_members)]
    member_steps = [0] * k_members
    active = torch.ones(k_members, device=device)
    steps_per_epoch = sum(1 for start in range(0, n, cfg.batch_size) if min(cfg.batch_size, n - start) >= 2 or n < 2)
    max_epochs = cfg.stop_rule.epochs_for(cfg.epochs, steps_per_epoch)
    train_seconds, val_seconds, samples = 0.0, 0.0, 0
    for epoch in range(max_epochs):
        skeleton.train()
        _sync(device)
        t0 = time.perf_counter()
        orders = torch.stack([torch.randperm(n, device=device, generator=g) for g in generators])
        live = [k for k in range(k_members) if active[k]]
        for start in range(0, n, cfg.batch_size):
            idx = orders[:, start : start + cfg.batch_size]  # [K, B]
            if idx.shape[1] < 2 and n >= 2:
                continue
            inputs = {k: v[idx] for k, v in train.inputs.items()}
            losses = batched_loss(trainable, frozen, buffers, inputs, train.labels[idx])
            optimizer.zero_grad(set_to_none=True)
            (losses * active).sum().backward()
            optimizer.step()
            samples += idx.shape[1] * len(live)
            for k in live:
                member_steps[k] += 1
        _sync(device)
        t1 = time.perf_counter()
        train_seconds += t1 - t0
        member_probs = _val_probs(batched_logits, skeleton, trainable, frozen, buffers, val, cfg)
        val_seconds += time.perf_counter() - t1
        for k in live:
            probs = member_probs[k]
            score, loss = float(metric(val_labels, probs)), nll(val_labels, probs)
            if not np.isfinite(score):
                score = -float("inf")
            histories[k].append(score)
            if stoppers[k].update(loss, score, member_steps[k]):
                state = {name[len("model."):]: t[k].detach().clone() for name, t in {**params, **buffers}.items()
                         if name[len("model."):] in keys}
                best[k] = (score, loss, epoch, state)
            elif stoppers[k].should_stop(member_steps[k]):
                active[k] = 0.0  # frozen: its loss is masked from now on, its best state is kept
        if not bool(active.any()):
            break
    results = []
    for k, model in enumerate(models):
        score, loss, best_epoch, best_state = best[k]
        if best_state is not None:
            model.load_state_dict(best_state)
        member_samples = member_steps[k] and samples * member_steps[k] // max(sum(member_steps), 1)
        results.append(TrainResult(model, float(score), best_epoch, len(histories[k]), train_seconds / k_members,
                                   int(member_samples), histories[k], val_seconds / k_members,
                                   best_step=stoppers[k].best_step, steps_run=member_steps[k], val_loss=float(loss)))
    return results


@torch.no_grad()
def _val_probs(batched_logits, skeleton: nn.Module, trainable: dict, frozen: dict, buffers: dict, val: Batch,
               cfg: TrainConfig) -> np.ndarray:
    """Every member's validation probabilities `[K, N, C]`, from one vmap-ed eval-mode forward per chunk."""
    skeleton.eval()
    n = len(val)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused eval kernel has no vmap rule (it would loop)
    try:
        chunks = [
            batched_logits(trainable, frozen, buffers, {k: v[i : i + cfg.eval_batch_size] for k, v in val.inputs.items()})
            for i in range(0, n, cfg.eval_batch_size)
        ]
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return torch.cat(chunks, dim=1).softmax(-1).cpu().numpy()
