"""Keyed dropout: training dropout masks that are a function of (member seed, step, module, element).

`nn.Dropout` draws its masks from torch's global generator. Trained one after another, seed k's
masks then depend on whatever drew before it; trained as one vmapped model
(`vmap(randomness="different")`), member k gets a slice of a `[K, ...]` draw. Either way the masks of
seed k differ between the sequential and the batched fit, so the two agree in distribution only, and
after a few hundred steps the fits (best epoch, metrics) differ per seed.

Here, for the duration of a fit, every `nn.Dropout` is swapped for a `KeyedDropout` whose keep/drop
decision for element i of call c of module m at optimiser step t of the member with seed s is a
hash of (s, t, m, c, i): counter-based, so it needs no generator state, works unchanged under
`vmap` (the seed and the probability are buffers, which `stack_module_state` stacks per member) and
gives member k of a batched fit exactly the masks of the sequential fit of seed k. The hash is the
well-known 32-bit "lowbias" integer mix (xor-shift / multiply, in int64 so nothing overflows) for
the key of each call; each element's draw is one multiply / xor-shift / multiply round of its
*mixed* index (`mix32(i)`, computed once per device into a cached tensor that grows as needed) xor
the key — a bijection of the mixed index under each key, cheap enough to cost about what torch's
fused dropout kernel costs on pooled heads. The masks keep a fraction 1 - p (to within 2^-32) and
look independent across seeds, steps and calls, and within one mask (tests check all three).
Hashing the raw index instead (as before this was fixed) left elements whose indices differ in one
high bit correlated: measured at p = 0.5, |c| ~ 0.01 at a stride of 2^14, 0.02 at 2^21, 0.08 at
2^26, 0.51 at 2^31; with the mixed index those strides measure |c| <= 0.001 at 2^23 pairs (noise:
standard error 0.00035). The index is hashed as a 32-bit value, so an input of more than 2^32
elements is drawn in blocks of 2^32, each block under its own key (block 0's is the call's key):
no block repeats another's mask. The original modules are put back after the fit, so a saved or
evaluated model is unchanged. Not covered: dropout inside `nn.MultiheadAttention` (its
attention-weight dropout is a float attribute passed to a functional kernel that draws from the
global generator).
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import Tensor, nn

_MASK32 = 0xFFFFFFFF
_MULT = 0x45D9F3B  # < 2**27: a 32-bit value times it stays below 2**59, inside int64


def mix32(x: Tensor) -> Tensor:
    """A bijective avalanche mix of non-negative int64 values below 2**32 (stays below 2**32)."""
    x = x ^ (x >> 16)
    x = (x * _MULT) & _MASK32
    x = x ^ (x >> 16)
    x = (x * _MULT) & _MASK32
    return x ^ (x >> 16)


def _py_mix(x: int) -> int:
    """`mix32` on a Python int (the parts of a key that every member shares: step, module, call)."""
    x ^= x >> 16
    x = (x * _MULT) & _MASK32
    x ^= x >> 16
    x = (x * _MULT) & _MASK32
    return x ^ (x >> 16)


class DropoutClock:
    """The step (batch) counter the swapped modules of one fit share, and the per-step call counts.

    Deep copies return the clock itself, so that a copied skeleton (the vmapped path) ticks with the
    members it stands for."""

    def __init__(self) -> None:
        self.step = 0
        self._calls: defaultdict[int, int] = defaultdict(int)

    def tick(self, step: int) -> None:
        """Start optimiser step `step`: call counts start again from zero."""
        self.step = step
        self._calls.clear()

    def call(self, module_index: int) -> int:
        """The number of this module's earlier calls in the current step (and count this one)."""
        count = self._calls[module_index]
        self._calls[module_index] = count + 1
        return count

    def __deepcopy__(self, memo: dict) -> DropoutClock:
        return self


class KeyedDropout(nn.Module):
    """Inverted dropout whose mask is a hash of (seed, clock step, module index, call, element index).

    `p` and `seed` are non-persistent buffers: per-member values under `stack_module_state`, and
    absent from `state_dict`."""

    def __init__(self, p: float, seed: int, index: int, clock: DropoutClock) -> None:
        super().__init__()
        self.register_buffer("p", torch.tensor(float(p)), persistent=False)
        self.register_buffer("seed", torch.tensor(int(seed) & _MASK32, dtype=torch.int64), persistent=False)
        self.index, self.clock = index, clock

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return x
        call = self.clock.call(self.index)
        key = mix32(self.seed ^ _py_mix(_py_mix(self.clock.step & _MASK32) ^ (((self.index << 16) + call) & _MASK32)))
        draw = _draws(x.numel(), key, x.device).view(x.shape)  # uniform on [0, 2**32)
        keep = 1.0 - self.p.to(torch.float64)
        mask = draw < (keep * 2.0**32).to(torch.int64)  # p = 0: always kept, exactly x
        return torch.where(mask, x / keep.clamp_min(1e-12).to(x.dtype), 0.0)  # p = 1: zeros, as nn.Dropout


BLOCK = 1 << 32  # elements per key: indices are hashed as 32-bit values
_MIXED: dict[str, Tensor] = {}


def _mixed_indices(n: int, device: torch.device) -> Tensor:
    """`mix32(arange(n))` as int64 (n <= BLOCK), sliced from one cached tensor per device that grows
    to at least 1.25x its old length when a larger input comes: the shapes of a fit repeat every step,
    so the mix is computed a few times per fit, not per call."""
    name = str(device)
    have = _MIXED.get(name)
    if have is None or len(have) < n:
        size = min(max(n, 0 if have is None else len(have) * 5 // 4), BLOCK)
        _MIXED[name] = have = mix32(torch.arange(size, device=device, dtype=torch.int64))
    return have[:n]


def _draws(n: int, key: Tensor, device: torch.device) -> Tensor:
    """The `n` draws (uniform on [0, 2**32)) of a call keyed by `key`: the per-element round of
    `mix32(i) ^ key`. Beyond BLOCK elements each block of BLOCK is drawn under its own key, so that
    element i and i + BLOCK (equal as 32-bit indices) do not share a draw."""
    if n <= BLOCK:
        return _element_hash(_mixed_indices(n, device) ^ key)
    blocks = []
    for b, start in enumerate(range(0, n, BLOCK)):
        block_key = key if b == 0 else mix32(key ^ _py_mix(b))
        blocks.append(_element_hash(_mixed_indices(min(BLOCK, n - start), device) ^ block_key))
    return torch.cat(blocks)


def _element_hash(x: Tensor) -> Tensor:
    """The per-element mix (multiply, xor-shift, multiply: fewer passes than `mix32`, enough once the
    key itself is fully mixed); the comparison reads its high bits."""
    x = (x * _MULT) & _MASK32
    x = x ^ (x >> 15)
    return (x * _MULT) & _MASK32


Swapped = list[tuple[nn.Module, str, nn.Module]]


def swap_dropout(model: nn.Module, seed: int, clock: DropoutClock) -> Swapped:
    """Replace every plain `nn.Dropout` under `model` by a `KeyedDropout` keyed by `seed` (modules
    numbered in `model.modules()` order, so that equal architectures number them alike); returns what
    `restore_dropout` puts back."""
    swapped: Swapped = []
    ref = next(model.parameters(), next(model.buffers(), torch.empty(0)))
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:
                keyed = KeyedDropout(child.p, seed, len(swapped), clock).to(ref.device)
                keyed.train(child.training)
                parent._modules[name] = keyed
                swapped.append((parent, name, child))
    return swapped


def restore_dropout(swapped: Swapped) -> None:
    """Put the original `nn.Dropout` modules back (the keyed ones' training flag carried over)."""
    for parent, name, child in swapped:
        child.train(parent._modules[name].training)
        parent._modules[name] = child


__all__ = ["DropoutClock", "KeyedDropout", "mix32", "restore_dropout", "swap_dropout"]
