"""Many configurations as one: members that differ in seed *and* hyperparameters, trained as one model.

The engine behind batched seeds (bench/training/batched.py) and batched trials (bench/search/
trial_batch.py). The members' parameters are stacked and one `vmap`-ed `functional_call` computes
every member's loss on its own batch; the summed loss gives each member exactly its own gradient.

What stays per member, so that member k is `train_model(member_k.model, ..., member_k.seed)`:
- initialisation (the caller builds each model after seeding torch) and data order (a generator
  seeded with the member's seed);
- learning rate and weight decay: the stacked tensors are the leaves; when the members share lr
  and weight decay one `torch.optim.AdamW` updates them (element-wise, so exactly as K optimisers
  would); when they differ, `_MemberAdamW` runs torch's AdamW arithmetic with per-member
  coefficients. (The alternative, per-member leaves in one param group each, `torch.stack`-ed into
  the vmapped call every step, was measured slower: a copy per step and K× the optimizer's
  per-tensor loop; docs/throughput.md.)
- dropout probability and masks: every `nn.Dropout` is swapped, for the fit only, for a
  `KeyedDropout` (bench/training/dropout.py) whose `p` and seed are (non-persistent) buffers, which
  `stack_module_state` stacks per member; its masks are a hash of (member seed, step, module, call,
  element), exactly those of the member's sequential fit. The original modules are put back
  afterwards. Other module attributes are not stacked: members whose non-tensor attributes differ
  (e.g. `nn.MultiheadAttention.dropout`) must not share a batch, which `structure_key` encodes;
- early stopping, pruning and failure: each member has its own `EarlyStopper`; `on_epoch` may raise
  (optuna's `TrialPruned`, say) and a member whose training loss goes non-finite fails with
  `NonFiniteLoss`. A stopped, pruned or failed member is frozen (its loss masked out), never dropped;
  the batch ends when no member is active. (Attention-weight dropout inside `nn.MultiheadAttention`
  still draws from the global generator, per member under `randomness="different"`: with it > 0
  such members agree with their sequential fits in distribution only.)
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from fusebench.core import metrics as metric_lib
from fusebench.strategies.base import FusionModel
from fusebench.training.dropout import DropoutClock, restore_dropout, swap_dropout
from fusebench.training.loop import Batch, TrainConfig, TrainResult, loss_of
from fusebench.training.stopping import EarlyStopper, nll

PER_MEMBER_PARAMS = ("lr", "weight_decay", "dropout")  # hyperparameters that may differ inside one batch


class NonFiniteLoss(ValueError):
    """A member's training loss became NaN or infinite: that member (its trial) fails, the others go on."""


@dataclass(frozen=True)
class Member:
    """One model to fit: built after `torch.manual_seed(seed)`; `on_epoch(epoch, val_metric)` may raise."""

    model: FusionModel
    seed: int
    on_epoch: Callable[[int, float], None] | None = None


@dataclass(frozen=True)
class MemberFit:
    """A member's outcome: its fit (best state restored), or the exception that stopped it."""

    result: TrainResult | None
    error: Exception | None = None


def structure_key(model: FusionModel) -> str:
    """What members of one batch must share: the strategy, every tensor's shape and dtype, every
    non-tensor module attribute (plain `nn.Dropout.p` excepted: it becomes a per-member buffer), and
    every hyperparameter other than lr, weight decay and dropout. Equal keys can train together."""
    tensors = tuple((k, tuple(v.shape), str(v.dtype)) for k, v in model.state_dict().items())
    attrs = []
    for name, module in model.named_modules():
        plain = {k: v for k, v in vars(module).items()
                 if k != "training" and isinstance(v, (int, float, bool, str, type(None), tuple))}
        if type(module) is nn.Dropout:
            plain.pop("p", None)
        attrs.append((name, type(module).__name__, tuple(sorted(plain.items()))))
    hp = getattr(model, "params", None)
    shared = {k: v for k, v in dataclasses.asdict(hp).items() if k not in PER_MEMBER_PARAMS} if hp is not None else {}
    return repr((type(model).__qualname__, tensors, tuple(attrs), tuple(sorted(shared.items()))))


def group_members(models: Sequence[FusionModel]) -> list[list[int]]:
    """Indices of `models` grouped by `structure_key`, groups in order of their first member."""
    groups: dict[str, list[int]] = {}
    for i, model in enumerate(models):
        groups.setdefault(structure_key(model), []).append(i)
    return list(groups.values())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Functional(nn.Module):
    """`forward(inputs, labels=None)`: the member's training loss, or its logits when labels is None."""

    def __init__(self, model: FusionModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: dict[str, Tensor], labels: Tensor | None = None) -> Tensor:
        if labels is None:
            return self.model(inputs).float()
        return loss_of(self.model, Batch(inputs, labels))


class _MemberAdamW:
    """AdamW over stacked `[K, ...]` parameters with a learning rate and weight decay per member.

    torch's single-tensor AdamW step (decoupled weight decay, bias-corrected moments, eps outside the
    square root) with the two scalars that differ per member turned into `[K, 1, ...]` coefficients;
    element-wise, so member k's slice follows exactly the arithmetic of its own `torch.optim.AdamW`
    (tests/test_trial_batch.py holds it to that)."""

    def __init__(self, params: list[Tensor], lrs: list[float], wds: list[float], betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        self.params, self.lrs, self.betas, self.eps = params, lrs, betas, eps
        self.moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]
        self.steps = [0] * len(params)
        ref = params[0]
        self.decay = torch.tensor([1 - lr * wd for lr, wd in zip(lrs, wds)], dtype=ref.dtype, device=ref.device)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        b1, b2 = self.betas
        for i, (p, (m, v)) in enumerate(zip(self.params, self.moments)):
            if p.grad is None:
                continue
            self.steps[i] += 1
            step = self.steps[i]
            shape = (len(self.lrs),) + (1,) * (p.dim() - 1)
            neg_step = torch.tensor([-(lr / (1 - b1**step)) for lr in self.lrs], dtype=p.dtype, device=p.device)
            p.mul_(self.decay.view(shape))
            m.lerp_(p.grad, 1 - b1)
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
            denom = (v.sqrt() / (1 - b2**step) ** 0.5).add_(self.eps)
            p.add_(neg_step.view(shape) * m / denom)


class _Stacked:
    """The members' parameters stacked `[K, ...]` (the leaves), and the optimizer that updates them:
    torch's AdamW when the members share lr and weight decay, `_MemberAdamW` when they do not."""

    def __init__(self, wrapped: list[_Functional]) -> None:
        hps = [(w.model.params.lr, w.model.params.weight_decay) for w in wrapped]
        self.params, self.buffers = stack_module_state(wrapped)
        self.trainable = [n for n, p in wrapped[0].named_parameters() if p.requires_grad]
        leaves = [self.params[n] for n in self.trainable]
        self.optimizer: torch.optim.AdamW | _MemberAdamW
        if all(h == hps[0] for h in hps):  # one AdamW: element-wise, so exactly K optimisers
            self.optimizer = torch.optim.AdamW(leaves, lr=hps[0][0], weight_decay=hps[0][1])
        else:
            self.optimizer = _MemberAdamW(leaves, [h[0] for h in hps], [h[1] for h in hps])

    def current(self) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """(trainable, frozen) stacked parameters `[K, ...]`."""
        return ({n: self.params[n] for n in self.trainable},
                {n: v for n, v in self.params.items() if n not in self.trainable})

    def state_of(self, k: int, keys: set[str]) -> dict[str, Tensor]:
        """Member k's state dict (model keys, persistent entries only), detached copies."""
        tensors = {**self.params, **self.buffers}
        return {n[len("model."):]: t[k].detach().clone() for n, t in tensors.items() if n[len("model."):] in keys}


def fit_members(members: Sequence[Member], train: Batch, val: Batch, cfg: TrainConfig, main_metric: str) -> list[MemberFit]:
    """Fit the members (same `structure_key`, at least two) as one vmapped model; see the module doc.

    Raises what vmap raises when a forward cannot be traced (the caller falls back to sequential)."""
    clock = DropoutClock()  # one clock for every member: they step together
    swapped = [swap_dropout(m.model, m.seed, clock) for m in members]
    try:
        # The math attention kernel is plain matmuls and a softmax, which vmap batches. The fused
        # kernels are not: on CUDA the efficient kernel's batching rule fails ("LSE is not correctly
        # aligned", every attention model fell back to one member at a time on an H200), and the CPU
        # flash kernel has no rule at all, so vmap looped over the members.
        with sdpa_kernel(SDPBackend.MATH):
            return _fit(members, train, val, cfg, main_metric, clock)
    finally:
        for s in swapped:
            restore_dropout(s)


def _fit(members: Sequence[Member], train: Batch, val: Batch, cfg: TrainConfig, main_metric: str,
         clock: DropoutClock) -> list[MemberFit]:
    device = train.labels.device
    models = [m.model for m in members]
    k_members = len(models)
    metric = metric_lib.METRICS.get(main_metric)
    val_labels = val.labels.cpu().numpy()
    for m in models:
        m.fit_prior(train.labels)
    wrapped = [_Functional(m) for m in models]
    stacked = _Stacked(wrapped)
    skeleton = copy.deepcopy(wrapped[0])
    batched_loss = vmap(lambda p, f, b, x, y: functional_call(skeleton, ({**p, **f}, b), (x, y)),
                        in_dims=(0, 0, 0, 0, 0), randomness="different")
    batched_logits = vmap(lambda p, f, b, x: functional_call(skeleton, ({**p, **f}, b), (x,)),
                          in_dims=(0, 0, 0, None), randomness="different")
    keys = set(models[0].state_dict())
    generators = [torch.Generator(device=device).manual_seed(m.seed) for m in members]
    stoppers = [EarlyStopper(cfg.stop_rule) for _ in models]
    best: list[tuple[float, float, int, dict | None]] = [(-float("inf"), float("nan"), -1, None)] * k_members
    errors: list[Exception | None] = [None] * k_members
    histories: list[list[float]] = [[] for _ in range(k_members)]
    member_steps = [0] * k_members
    member_samples = [0] * k_members
    active = torch.ones(k_members, dtype=torch.bool, device=device)
    n = len(train)
    steps_per_epoch = sum(1 for start in range(0, n, cfg.batch_size) if min(cfg.batch_size, n - start) >= 2 or n < 2)
    max_epochs = cfg.stop_rule.epochs_for(cfg.epochs, steps_per_epoch)
    train_seconds, val_seconds, batches = 0.0, 0.0, 0
    for epoch in range(max_epochs):
        skeleton.train()
        _sync(device)
        t0 = time.perf_counter()
        orders = torch.stack([torch.randperm(n, device=device, generator=g) for g in generators])
        for start in range(0, n, cfg.batch_size):
            idx = orders[:, start : start + cfg.batch_size]  # [K, B]
            if idx.shape[1] < 2 and n >= 2:
                continue
            live = active.nonzero().flatten().tolist()
            trainable, frozen = stacked.current()
            clock.tick(batches)  # = the step count of every active member, as in its sequential fit
            batches += 1
            losses = batched_loss(trainable, frozen, stacked.buffers, {k: v[idx] for k, v in train.inputs.items()},
                                  train.labels[idx])
            finite = torch.isfinite(losses.detach())
            for k in live:
                if not finite[k]:
                    errors[k] = NonFiniteLoss(f"training loss {float(losses.detach()[k])} at step {member_steps[k] + 1}")
                    active[k] = False
            stacked.optimizer.zero_grad(set_to_none=True)
            torch.where(active, losses, torch.zeros_like(losses)).sum().backward()
            stacked.optimizer.step()
            for k in live:
                if active[k]:
                    member_steps[k] += 1
                    member_samples[k] += idx.shape[1]
        _sync(device)
        t1 = time.perf_counter()
        train_seconds += t1 - t0
        live = active.nonzero().flatten().tolist()
        if not live:
            break
        trainable, frozen = stacked.current()
        member_probs = _val_probs(batched_logits, skeleton, trainable, frozen, stacked.buffers, val, cfg)
        val_seconds += time.perf_counter() - t1
        for k in live:
            probs = member_probs[k]
            score, loss = float(metric(val_labels, probs)), nll(val_labels, probs)
            if not np.isfinite(score):
                score = -float("inf")
            histories[k].append(score)
            if members[k].on_epoch is not None:
                try:
                    members[k].on_epoch(epoch, score)
                except Exception as exc:  # pruned (or the callback failed): this member only
                    errors[k] = exc
                    active[k] = False
                    continue
            if stoppers[k].update(loss, score, member_steps[k]):
                best[k] = (score, loss, epoch, stacked.state_of(k, keys))
            elif stoppers[k].should_stop(member_steps[k]):
                active[k] = False  # frozen: its loss is masked from now on, its best state is kept
        if not bool(active.any()):
            break
    out = []
    for k, model in enumerate(models):
        if errors[k] is not None:
            out.append(MemberFit(None, errors[k]))
            continue
        score, loss, best_epoch, best_state = best[k]
        if best_state is not None:
            model.load_state_dict(best_state)
        out.append(MemberFit(TrainResult(  # the batch's time is shared equally, as its members ran together
            model, float(score), best_epoch, len(histories[k]), train_seconds / k_members, member_samples[k],
            histories[k], val_seconds / k_members, best_step=stoppers[k].best_step, steps_run=member_steps[k],
            val_loss=float(loss))))
    return out


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
