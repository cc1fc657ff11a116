"""Mid (intermediate) fusion of pooled modalities: modality-specific encoders, fused in a learned
hidden space by gating (GMU), conditioning (FiLM) or attention over modalities. The multiplicative
methods live in `bilinear.py`, the token models in `crossmodal.py` and `bottleneck.py`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from fusebench.core import space
from fusebench.strategies.base import (
    FusionModel,
    FusionSpec,
    SharedParams,
    input_norm,
    mlp_head,
    presence,
    register_strategy,
)


class ProjectedModalities(FusionModel):
    """Shared machinery: LayerNorm + Linear(+GELU) projection of each pooled modality to hidden_dim."""

    def __init__(self, spec: FusionSpec, params: SharedParams, out_dim: int | None = None, act: bool = True) -> None:
        super().__init__(spec, params)
        h = out_dim or params.hidden_dim
        self.out_dim = h
        self.proj = nn.ModuleDict(
            {m: nn.Sequential(input_norm(d), nn.Linear(d, h), *([nn.GELU()] if act else [])) for m, d in spec.dims.items()}
        )

    def project(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Projections of the present modalities (sorted)."""
        return {m: self.proj[m](inputs[m]) for m in self.present(inputs)}

    @staticmethod
    def here(inputs: Mapping[str, Tensor], m: str, ref: Tensor) -> Tensor:
        """Per-example presence `[B]` of modality m (0 where absent or all zero)."""
        return presence(inputs[m]).to(ref.dtype) if m in inputs else ref.new_zeros(ref.shape[0])

    def project_all(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Projections of every modality of the spec (sorted), zero for an example where the modality
        is absent or all zero — so a zeroed modality and a missing one give the same output."""
        hidden = self.project(inputs)
        ref = next(iter(hidden.values()))
        out = {}
        for m in self.spec.modalities:
            if m in hidden:
                out[m] = hidden[m] * self.here(inputs, m, ref).unsqueeze(-1)
            else:
                out[m] = ref.new_zeros(ref.shape[0], self.out_dim)
        return out


@register_strategy(
    "gmu",
    family="mid",
    min_modalities=2,
    citation="Arevalo, Solorio, Montes-y-Gómez & González (2017), Gated Multimodal Units for Information Fusion, ICLR workshop",
)
class GatedMultimodalUnit(ProjectedModalities):
    """Gated Multimodal Unit: h = Σ_m z_m ⊙ tanh(x_m) with x_m a linear map of modality m and a gate
    per hidden unit, z = softmax over modalities of W_z[x_1; …; x_M] (∈ R^{M×h}); with two modalities
    this is the paper's z = σ(W_z[x_v; x_t]), h = z ⊙ h_v + (1 − z) ⊙ h_t.

    Missing modality: its slot in [x_1; …; x_M] is zero and it is left out of the per-unit softmax
    and the sum; per example, a modality that is all zero (e.g. zeroed by modality dropout) is
    treated the same way.
    """

    zeroed_is_absent = True

    def __init__(self, spec: FusionSpec, params: SharedParams) -> None:
        super().__init__(spec, params, act=False)
        h, n = params.hidden_dim, len(spec.dims)
        self.gate = nn.Linear(n * h, n * h)
        self.head = mlp_head(h, h, spec.num_classes, params.dropout)

    def gates(self, inputs: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(z `[B, M, h]` — one gate per modality and hidden unit, summing to 1 over the present
        modalities — and the projections x `[B, M, h]`, zero where a modality is absent)."""
        x = torch.stack(list(self.project_all(inputs).values()), 1)
        here = torch.stack([self.here(inputs, m, x) for m in self.spec.modalities], 1)  # [B, M]
        logits = self.gate(x.flatten(1)).view_as(x)
        logits = logits.masked_fill(here.unsqueeze(-1) == 0, -1e4)
        return logits.softmax(1), x

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        z, x = self.gates(inputs)
        return self.head((z * torch.tanh(x)).sum(1))

    def unimodal_logits(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Each modality alone through the same unit (its gate is then 1)."""
        return {m: self.head(torch.tanh(h)) for m, h in self.project(inputs).items()}


@dataclass(frozen=True)
class FiLMParams(SharedParams):
    """`conditioner` ∈ [0, 1) picks the conditioning modality as floor(conditioner · M) of the M sorted
    modalities, so every modality is equally likely under uniform sampling whatever M is."""

    conditioner: float = field(default=0.0, metadata=space.float_range(0.0, 0.999))


@register_strategy(
    "film",
    family="mid",
    params=FiLMParams,
    min_modalities=2,
    citation=("Perez, Strub, de Vries, Dumoulin & Courville (2018), "
              "FiLM: Visual Reasoning with a General Conditioning Layer, AAAI"),
)
class FiLMFusion(ProjectedModalities):
    """FiLM conditioning: one modality (the `conditioner`, searched uniformly over the modalities)
    predicts a per-feature scale and shift (γ ⊙ h + β) for each other modality's hidden vector; the
    conditioner's own vector and the modulated vectors are averaged and classified.

    Missing modality: an absent conditioned modality is left out of the average; when the
    conditioner is absent the others pass through unmodulated (γ = 1, β = 0), which is also what
    `unimodal_logits` gives per modality.
    """

    def __init__(self, spec: FusionSpec, params: FiLMParams) -> None:
        super().__init__(spec, params)
        h = params.hidden_dim
        self.conditioner = self.pick_conditioner(spec.modalities, params.conditioner)
        self.film = nn.ModuleDict({m: nn.Linear(h, 2 * h) for m in spec.dims if m != self.conditioner})
        for lin in self.film.values():  # start as the identity modulation
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
        self.head = mlp_head(h, h, spec.num_classes, params.dropout)

    @staticmethod
    def pick_conditioner(modalities: list[str], u: float) -> str:
        """The conditioning modality for a search value u ∈ [0, 1)."""
        return modalities[min(int(u * len(modalities)), len(modalities) - 1)]

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        hidden = self.project(inputs)
        cond = hidden.get(self.conditioner)
        out = []
        for m, h in hidden.items():
            if m != self.conditioner and cond is not None:
                gamma, beta = self.film[m](cond).chunk(2, dim=-1)
                h = (1 + gamma) * h + beta
            out.append(h)
        return self.head(torch.stack(out, 0).mean(0))

    def unimodal_logits(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {m: self.head(h) for m, h in self.project(inputs).items()}


@register_strategy(
    "attention_weights",
    family="mid",
    min_modalities=2,
    citation="Hori et al. (2017), Attention-Based Multimodal Fusion for Video Description, ICCV",
)
class AttentionWeights(ProjectedModalities):
    """Learned attention over modalities: α = softmax_m(w · tanh(U h_m)), fused = Σ α_m h_m,
    so the model weighs modalities per example.

    Missing modality: the softmax runs over present modalities only.
    """

    def __init__(self, spec: FusionSpec, params: SharedParams) -> None:
        super().__init__(spec, params)
        h = params.hidden_dim
        self.score = nn.Sequential(nn.Linear(h, h), nn.Tanh(), nn.Linear(h, 1, bias=False))
        self.head = mlp_head(h, h, spec.num_classes, params.dropout)

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        hidden = torch.stack(list(self.project(inputs).values()), 1)  # [B, M, H]
        alpha = self.score(hidden).softmax(1)
        return self.head((alpha * hidden).sum(1))

    def unimodal_logits(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {m: self.head(h) for m, h in self.project(inputs).items()}

