"""Many models as one: the K evaluation seeds of a cell trained as one batched model.

Small fusion heads leave a CPU (and far more a GPU) idle between tiny kernels, so training K copies
one after another costs K times the launch overhead. Here the K members' parameters are stacked
(`torch.func.stack_module_state`) and one `vmap`-ed `functional_call` computes every member's loss
on its own batch; the summed loss gives each member exactly its own gradient, and AdamW, being
element-wise, updates each member exactly as K separate optimisers would.

What stays per member, so that member k is the sequential fit of seed k:
- initialisation: member k is built after `torch.manual_seed(seed_k)`, as in the sequential loop;
- data order: member k's permutation comes from its own generator seeded with `seed_k`;
- dropout: masks are keyed by (seed, step, module, call, element) in both loops
  (bench/training/dropout.py), so member k draws exactly the masks of the sequential fit of seed k
  (attention-weight dropout inside `nn.MultiheadAttention` excepted: it agrees in distribution);
- early stopping: each member has its own `EarlyStopper` (the sequential loop's rule, in optimiser
  steps), best state and patience; a member that stops is frozen
  (its loss is masked to zero and its best state is what it returns), not dropped; the batch stops
  when every member has.

A configuration or strategy that cannot be batched (modality dropout and gradient blending draw
from the sequential generator; `torch.compile`; a forward that `vmap` cannot trace) falls back to
sequential training, and so do attention (token) models on one CPU thread, where batching them is slower;
the reason is returned so that records and logs can say so. The vmapped
engine itself (shared with batched trials, whose members also differ in lr, weight decay and
dropout) is bench/training/members.py.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from fusebench.strategies.base import FusionModel
from fusebench.training.loop import Batch, TrainConfig, TrainResult, train_model
from fusebench.training.members import Member, fit_members

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SeedFits:
    """The K fitted members, in seed order, and how they were trained."""

    results: list[TrainResult]
    batched: bool
    reason: str = ""  # why the members were trained one after another, when they were
    seconds: float = 0.0  # wall time of the whole fit (all members)


ATTENTION_ON_CPU = ("attention models train faster one after another on one CPU thread "
                    "(batched 0.88-1.01x of sequential there; docs/gpu.md)")


def uses_attention(model: nn.Module) -> bool:
    """Whether the model holds `nn.MultiheadAttention` (the token strategies: coattention,
    early_transformer, mbt, mult). On one CPU thread their batched fit measured slower than one member
    after another (0.88-1.01x for 3 trials in the math kernel, which vmap vectorises), so there
    they train sequentially; with more threads (1.23-1.58x at 16) and on a GPU they batch."""
    return any(isinstance(m, nn.MultiheadAttention) for m in model.modules())


def vmap_failed(exc: BaseException) -> str:
    """The fallback reason for a forward vmap could not trace: the error's type and the first line of
    its message (none for a bare raise: `str(exc).splitlines()[0]` raised IndexError there)."""
    return f"vmap failed: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"


def not_batchable(models: Sequence[FusionModel], cfg: TrainConfig, device: torch.device, alone: bool = False) -> str:
    """Why these members cannot train as one batched model ("" when they can). `device` is where they
    will train, i.e. the data's device: the models may still sit on the CPU (fit_seeds moves them).
    `alone`: a single member may be a batch of one (see fit_seeds' `batch_of`)."""
    if len(models) < 2 and not alone:
        return "a single member"
    if cfg.modality_dropout > 0 or cfg.gradient_blending:
        return "modality dropout and gradient blending draw from the sequential loop's generator"
    if cfg.compile:
        return "torch.compile of a vmap-ed functional model is not supported here"
    if not any(p.requires_grad for p in models[0].parameters()):
        return "nothing to train"
    if uses_attention(models[0]) and device.type == "cpu" and torch.get_num_threads() == 1:
        return ATTENTION_ON_CPU
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
    on_result: Callable[[int, TrainResult, float, int], None] | None = None,
    batch_of: int = 0,
    before_fit: Callable[[int], None] | None = None,
) -> SeedFits:
    """Build one member per seed (`build(seed)` seeds torch itself) and fit them all, batched when
    possible. Each result is what `train_model(build(seed), ..., seed)` would return for that seed.

    `on_result(seed, result, fit_seconds, together)` is called as soon as a seed's fit is done: after
    each member when they train one after another (`together` 1), after the batch when batched
    (`together` = the members in it, each getting an equal share of the batch's seconds). A caller
    that stores each seed there (bench/run/seed_store.py) loses at most the fit in progress when the
    process is killed.

    `batch_of`: how many seeds the uninterrupted fit batches (0: these `seeds`). A resumed cell that
    trains only the seeds not stored passes its full count, so that its last seed trains as a batch of
    one where the full fit would have batched it: a member's numbers do not depend on which other
    members share its batch, but training one after another rounds differently (~6e-8 in the
    probabilities; tests/test_seed_store_resume.py). Bit for bit on one CPU thread, as cells train on
    CPU; with more threads a batch of one measured ~1e-9 off the full batch, still closer than that.

    `before_fit(seed)` is called just before each member's fit when they train one after another. Their
    fits draw from torch's global generator where a module does (dropout inside a Hugging Face
    encoder, attention-weight dropout of `nn.MultiheadAttention`), so seed k's fit starts where seed
    k-1's scoring left it; a resumed cell puts back the state the earlier process stored there."""
    t0 = time.perf_counter()
    models = [build(seed) for seed in seeds]
    alone = batch_of > 1
    reason = not_batchable(models, cfg, train.labels.device, alone) if batched else "batching switched off"
    if not reason:
        try:
            with warnings.catch_warnings():  # torch's "no batching rule, falling back to a loop" notes
                warnings.filterwarnings("ignore", message=".*batching rule.*", category=UserWarning)
                fits = fit_members([Member(m, s) for m, s in zip(models, seeds)], train, val, cfg, main_metric)
            # a member whose loss went non-finite is refitted alone, as the sequential loop would have fitted it
            results = [f.result if f.result is not None else train_model(build(s), train, val, cfg, main_metric, s)
                       for f, s in zip(fits, seeds)]
        except (RuntimeError, NotImplementedError, ValueError) as exc:  # a forward vmap cannot trace
            reason = vmap_failed(exc)
            log.info("training %d seeds one after another (%s)", len(models), reason)
            models = [build(seed) for seed in seeds]  # a failed batched step may have touched them
        else:  # outside the try: an error in on_result is the caller's, not a vmap failure
            seconds = time.perf_counter() - t0
            for seed, result in zip(seeds, results):
                if on_result is not None:
                    on_result(seed, result, seconds / len(seeds), len(seeds))
            return SeedFits(results, True, "", seconds)
    results = []
    for model, seed in zip(models, seeds):
        if before_fit is not None:
            before_fit(seed)
        t1 = time.perf_counter()
        results.append(train_model(model, train, val, cfg, main_metric, seed))
        if on_result is not None:
            on_result(seed, results[-1], time.perf_counter() - t1, 1)
    return SeedFits(results, False, reason, time.perf_counter() - t0)
