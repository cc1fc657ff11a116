"""The strategy contract and its registry.

A strategy is an `nn.Module` whose `forward(inputs)` takes a mapping modality name → tensor and
returns class logits `[B, num_classes]`. Pooled strategies receive `[B, D_m]` per modality;
token strategies receive `[B, T_m, D_m]` where padding positions are all-zero rows (see
`padding_mask`). Modalities are always iterated in sorted order. A modality that is absent at
inference is simply a missing key; each strategy documents how it treats that.

Each strategy is registered with a frozen params dataclass (subclass of `SharedParams`) whose
field metadata is its optuna search space; the shared hyperparameters use the same ranges for
every strategy so that budgets are equal.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from fusebench.core import space
from fusebench.core.registry import Registry

Family = Literal["early", "mid", "late", "unimodal", "baseline"]
InputKind = Literal["pooled", "tokens"]
FAMILIES: tuple[str, ...] = ("early", "mid", "late", "unimodal", "baseline")


@dataclass(frozen=True)
class SharedParams:
    """Hyperparameters every trainable strategy shares, searched over identical ranges."""

    lr: float = field(default=1e-3, metadata=space.log_float(1e-4, 1e-2))
    weight_decay: float = field(default=1e-4, metadata=space.log_float(1e-6, 1e-2))
    dropout: float = field(default=0.1, metadata=space.float_range(0.0, 0.5))
    hidden_dim: int = field(default=64, metadata=space.choice([32, 64, 128]))

    def __post_init__(self) -> None:
        space.validate_params(self)


@dataclass(frozen=True)
class FusionSpec:
    """What a strategy is built for: per-modality feature sizes and the number of classes.

    Args:
        dims: modality → feature dimension D_m.
        tokens: modality → sequence length T_m of its token features (1 when only pooled).
        num_classes: size of the output logits.
    """

    dims: Mapping[str, int]
    tokens: Mapping[str, int]
    num_classes: int

    def __post_init__(self) -> None:
        if not self.dims:
            raise ValueError("FusionSpec needs at least one modality")
        if set(self.dims) != set(self.tokens):
            raise ValueError(f"dims keys {sorted(self.dims)} differ from tokens keys {sorted(self.tokens)}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        object.__setattr__(self, "dims", dict(sorted(self.dims.items())))
        object.__setattr__(self, "tokens", dict(sorted(self.tokens.items())))

    @property
    def modalities(self) -> list[str]:
        return list(self.dims)

    def restrict(self, modalities: list[str]) -> FusionSpec:
        """The same spec limited to some modalities (used by unimodal baselines)."""
        missing = sorted(set(modalities) - set(self.dims))
        if missing:
            raise ValueError(f"modalities {missing} not in spec {self.modalities}")
        return FusionSpec(
            {m: self.dims[m] for m in modalities}, {m: self.tokens[m] for m in modalities}, self.num_classes
        )


def padding_mask(x: Tensor) -> Tensor:
    """`[B, T, D]` → bool `[B, T]`, True for real tokens (padding rows are exactly zero)."""
    return x.abs().amax(dim=-1) > 0


def masked_mean(x: Tensor) -> Tensor:
    """Mean over real tokens of `[B, T, D]`, zero where a row has no real token."""
    mask = padding_mask(x).unsqueeze(-1).to(x.dtype)
    return (x * mask).sum(1) / mask.sum(1).clamp_min(1.0)


class FusionModel(nn.Module):
    """Base class of every strategy.

    Subclasses set `input_kind` and implement `forward(inputs) -> logits`. `present(inputs)`
    lists the modalities a batch actually carries, in sorted order, and raises a ValueError that
    names the expected and received sizes when a tensor does not match the spec.
    """

    input_kind: ClassVar[InputKind] = "pooled"
    # True when an example whose modality is all zero (modality dropout) gets exactly the output the
    # model gives with that modality absent; the property tests hold every such strategy to it.
    zeroed_is_absent: ClassVar[bool] = False

    def __init__(self, spec: FusionSpec, params: SharedParams) -> None:
        super().__init__()
        self.spec = spec
        self.params = params

    def present(self, inputs: Mapping[str, Tensor]) -> list[str]:
        unknown = sorted(set(inputs) - set(self.spec.dims))
        if unknown:
            raise ValueError(f"{type(self).__name__} got unknown modalities {unknown}; built for {self.spec.modalities}")
        names = [m for m in self.spec.modalities if m in inputs]
        if not names:
            raise ValueError(f"{type(self).__name__} got no modality; expected some of {self.spec.modalities}")
        for m in names:
            x = inputs[m]
            want = 2 if self.input_kind == "pooled" else 3
            if x.dim() != want or x.shape[-1] != self.spec.dims[m]:
                raise ValueError(
                    f"{type(self).__name__}: modality {m!r} has shape {tuple(x.shape)}, expected "
                    f"{'[B, D]' if want == 2 else '[B, T, D]'} with D={self.spec.dims[m]}"
                )
        return names

    @staticmethod
    def batch_size(inputs: Mapping[str, Tensor]) -> int:
        return next(iter(inputs.values())).shape[0]

    def fit_prior(self, labels: Tensor) -> None:
        """Hook called once with the training labels before training (baselines use it)."""


@dataclass(frozen=True)
class StrategyInfo:
    """Registry entry: everything the runner, the CLI and the contract tests need."""

    name: str
    family: Family
    cls: type[FusionModel]
    params: type[SharedParams]
    citation: str
    min_modalities: int = 1
    per_modality: bool = False  # expanded into one cell per modality ("unimodal:text")
    trainable: bool = True
    description: str = ""

    def build(self, spec: FusionSpec, params: SharedParams | None = None) -> FusionModel:
        params = params if params is not None else self.params()
        if not isinstance(params, self.params):
            raise TypeError(f"strategy {self.name!r} expects {self.params.__name__}, got {type(params).__name__}")
        return self.cls(spec, params)

    @property
    def input_kind(self) -> InputKind:
        return self.cls.input_kind

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "family": self.family,
            "modalities": "one (expanded per modality)" if self.per_modality else f">={self.min_modalities}",
            "input_kind": self.input_kind,
            "trainable": self.trainable,
            "citation": self.citation,
            "description": self.description,
            "search_space": space.search_space(self.params),
        }


STRATEGIES: Registry[StrategyInfo] = Registry("strategy")


def register_strategy(
    name: str,
    *,
    family: Family,
    params: type[SharedParams] = SharedParams,
    citation: str,
    min_modalities: int = 1,
    per_modality: bool = False,
    trainable: bool = True,
):
    """Class decorator that registers a `FusionModel` subclass under `name`."""
    if family not in FAMILIES:
        raise ValueError(f"family {family!r} not in {FAMILIES}")
    if not dataclasses.is_dataclass(params) or not params.__dataclass_params__.frozen:  # type: ignore[attr-defined]
        raise TypeError(f"params of {name!r} must be a frozen dataclass")

    def decorate(cls: type[FusionModel]) -> type[FusionModel]:
        doc = (cls.__doc__ or "").strip().splitlines()
        STRATEGIES.add(
            name,
            StrategyInfo(
                name=name,
                family=family,
                cls=cls,
                params=params,
                citation=citation,
                min_modalities=min_modalities,
                per_modality=per_modality,
                trainable=trainable,
                description=doc[0] if doc else "",
            ),
        )
        return cls

    return decorate


def input_norm(d: int, affine: bool = True) -> nn.Module:
    """LayerNorm over a modality's `d` input features, or the identity when `d` is 1.

    LayerNorm over a single feature maps every value to 0 (x − mean(x) = 0): a one-feature view
    (a score, a scalar measurement) would reach the model as a constant and carry no signal.
    """
    return nn.LayerNorm(d, elementwise_affine=affine) if d > 1 else nn.Identity()


def mlp_head(in_dim: int, hidden: int, out_dim: int, dropout: float) -> nn.Sequential:
    """The classifier head shared by strategies: Linear → GELU → Dropout → Linear."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, out_dim))


def zeros_like_missing(batch: int, dim: int, ref: Tensor) -> Tensor:
    return torch.zeros(batch, dim, dtype=ref.dtype, device=ref.device)


def pick_heads(hidden_dim: int, preferred: int = 4) -> int:
    """Largest head count ≤ preferred that divides hidden_dim."""
    for h in range(preferred, 0, -1):
        if hidden_dim % h == 0:
            return h
    return 1


def key_padding(x: Tensor) -> Tensor:
    """`[B, T, D]` → bool `[B, T]` for nn.MultiheadAttention: True where the position is padding.
    A row that is all padding keeps its first position unmasked so attention never sees only -inf.
    Branch-free, so that `torch.func.vmap` (batched seeds and trials, bench/training/members.py) can
    trace it: a data-dependent `if` made every token strategy fall back to one-member-at-a-time
    training, and made `fusebench throughput --trial-batching` crash."""
    pad = ~padding_mask(x)
    first = torch.zeros_like(pad)
    first[..., 0] = True
    return pad & ~(first & pad.all(dim=-1, keepdim=True))


class ModalityAloneLogits:
    """Mixin for fusion models that cope with absent modalities: `unimodal_logits` runs the very
    same network on each present modality alone (every other key absent), which is that model's
    natural per-modality branch (used by gradient blending). Costs one extra forward per modality."""

    def unimodal_logits(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {m: self({m: inputs[m]}) for m in self.present(inputs)}  # type: ignore[attr-defined,operator]


def presence(x: Tensor) -> Tensor:
    """Per-example presence of a modality as float `[B]`: 1 where it has any non-zero entry
    (a modality zeroed by modality dropout, or all padding, counts as absent)."""
    return (x.flatten(1).abs().amax(dim=1) > 0).to(x.dtype)


def presence_weighted_mean(values: list[Tensor], weights: list[Tensor]) -> Tensor:
    """Mean of `[B, H]` tensors weighted per example by `[B]` presence; where no weight is positive
    the plain mean is used (so the result is always finite)."""
    v = torch.stack(values, 0)
    w = torch.stack(weights, 0).unsqueeze(-1)
    total = w.sum(0)
    plain = v.mean(0)
    return torch.where(total > 0, (v * w).sum(0) / total.clamp_min(1e-12), plain)
