"""Unimodal baselines (one per modality) and trivial sanity floors."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fusebench.strategies.base import FusionModel, FusionSpec, SharedParams, input_norm, mlp_head, register_strategy


@register_strategy(
    "unimodal",
    family="unimodal",
    per_modality=True,
    citation="Standard practice; see Liang et al. (2021), MultiBench, NeurIPS Datasets and Benchmarks",
)
class Unimodal(FusionModel):
    """An MLP on a single modality: the baseline every fusion strategy must beat.

    The runner builds it with a spec restricted to one modality (cell `unimodal:<modality>`).
    Missing modality: cannot predict from nothing, so it raises ValueError.
    """

    def __init__(self, spec: FusionSpec, params: SharedParams) -> None:
        super().__init__(spec, params)
        if len(spec.modalities) != 1:
            raise ValueError(f"unimodal needs exactly one modality, got {spec.modalities}")
        (self.modality,) = spec.modalities
        d = spec.dims[self.modality]
        self.net = nn.Sequential(input_norm(d), mlp_head(d, params.hidden_dim, spec.num_classes, params.dropout))

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        return self.net(inputs[self.present(inputs)[0]])

    def unimodal_logits(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Its one branch (so gradient blending reduces to plain cross-entropy here)."""
        return {self.modality: self(inputs)}


@dataclass(frozen=True)
class NoParams(SharedParams):
    """Baselines that do not train still carry the shared fields (unused) for a uniform record."""


class PriorBaseline(FusionModel):
    """Predicts from the training label prior only; ignores every input."""

    def __init__(self, spec: FusionSpec, params: SharedParams) -> None:
        super().__init__(spec, params)
        self.register_buffer("log_prior", torch.zeros(spec.num_classes))

    def fit_prior(self, labels: Tensor) -> None:
        counts = torch.bincount(labels.long().cpu(), minlength=self.spec.num_classes).float() + 1e-3
        self.log_prior.copy_((counts / counts.sum()).log())


@register_strategy(
    "majority",
    family="baseline",
    params=NoParams,
    trainable=False,
    citation=("Sanity floor: the most frequent training class, "
              "as reported in Liang et al. (2021), MultiBench, NeurIPS Datasets and Benchmarks"),
)
class Majority(PriorBaseline):
    """Always predicts the training prior (argmax = majority class).

    Missing modality: irrelevant, every input is ignored.
    """

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        return self.log_prior.expand(self.batch_size(inputs), -1)


@register_strategy(
    "random",
    family="baseline",
    params=NoParams,
    trainable=False,
    citation="Sanity floor: chance level, as reported in Liang et al. (2021), MultiBench, NeurIPS Datasets and Benchmarks",
)
class RandomGuess(PriorBaseline):
    """Random logits per example (seeded by the global torch seed).

    Missing modality: irrelevant, every input is ignored.
    """

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        ref = next(iter(inputs.values()))
        return torch.randn(ref.shape[0], self.spec.num_classes, device=ref.device)
