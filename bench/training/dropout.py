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
the key of each call, and one multiply / xor-shift / multiply round per element (a bijection of the
element index under each key, cheap enough to cost about what torch's fused dropout kernel costs
on pooled heads); the
masks keep a fraction 1 - p (to within 2^-32) and look independent across seeds, steps and calls (tests
check both). Within one mask, the single per-element round leaves weak correlations between elements
whose indices differ in one high bit (measured, p = 0.5: |c| <= 0.02 for bits below 2^22, 0.08 at
2^26, 0.5 at 2^31, and masks repeat beyond 2^32 elements); hashing a cached `mix32(arange)` instead
of `arange` removes them (|c| <= 0.001) at no per-call cost: planned with the next baseline refresh,
since it changes every mask. The original modules are put back after the fit, so a saved or evaluated model is
unchanged. Not covered: dropout inside `nn.MultiheadAttention` (its attention-weight dropout is a
float attribute passed to a functional kernel that draws from the global generator).
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
        draw = _element_hash(_elements(x.numel(), x.device).view(x.shape) ^ key)  # uniform on [0, 2**32)
        keep = 1.0 - self.p.to(torch.float64)
        mask = draw < (keep * 2.0**32).to(torch.int64)  # p = 0: always kept, exactly x
        return torch.where(mask, x / keep.clamp_min(1e-12).to(x.dtype), 0.0)  # p = 1: zeros, as nn.Dropout


_ELEMENTS: dict[tuple[int, str], Tensor] = {}


def _elements(n: int, device: torch.device) -> Tensor:
    """`arange(n)` as int64, kept per (n, device): the shapes of a fit repeat every step."""
    key = (n, str(device))
    if key not in _ELEMENTS:
        if len(_ELEMENTS) > 64:
            _ELEMENTS.clear()
        _ELEMENTS[key] = torch.arange(n, device=device, dtype=torch.int64)
    return _ELEMENTS[key]


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
