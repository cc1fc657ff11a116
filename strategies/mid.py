"""Mid (intermediate) fusion: modality-specific encoders, fused in a learned hidden space."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from strategies.base import FusionModel, FusionSpec, SharedParams, mlp_head, register_strategy


@register_strategy(
    "gmu",
    family="mid",
    min_modalities=2,
    citation="Arevalo, Solorio, Montes-y-Gómez & González (2017), Gated Multimodal Units for Information Fusion, ICLR workshop",
)
class GatedMultimodalUnit(FusionModel):
    """Gated Multimodal Unit: h = Σ_m z_m ⊙ tanh(W_m x_m), gates z = softmax over modalities.

    The gate for each modality is computed from the concatenation of all present modalities'
    inputs (projected). Missing modality: excluded from the gate softmax and the sum.
    """

    def __init__(self, spec: FusionSpec, params: SharedParams) -> None:
        super().__init__(spec, params)
        h = params.hidden_dim
        self.proj = nn.ModuleDict({m: nn.Sequential(nn.LayerNorm(d), nn.Linear(d, h)) for m, d in spec.dims.items()})
        self.gate = nn.ModuleDict({m: nn.Linear(h, 1) for m in spec.dims})
        self.head = mlp_head(h, h, spec.num_classes, params.dropout)

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        present = self.present(inputs)
        hidden = [self.proj[m](inputs[m]) for m in present]
        context = torch.stack(hidden, 0).mean(0)
        gates = torch.cat([self.gate[m](context + h) for m, h in zip(present, hidden)], dim=-1).softmax(-1)
        fused = sum(gates[:, i : i + 1] * torch.tanh(h) for i, h in enumerate(hidden))
        return self.head(fused)
