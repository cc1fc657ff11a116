"""Early fusion: modalities are joined at the input, before any modality-specific processing."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from strategies.base import FusionModel, FusionSpec, SharedParams, mlp_head, register_strategy


@register_strategy(
    "concat",
    family="early",
    min_modalities=2,
    citation="Baltrušaitis, Ahuja & Morency (2019), Multimodal Machine Learning: A Survey and Taxonomy, TPAMI 41(2)",
)
class ConcatFusion(FusionModel):
    """Early fusion (EF): concatenate pooled features of every modality, then an MLP.

    Missing modality: its slot in the concatenation is filled with zeros, so the model sees the
    same input width; a per-modality LayerNorm keeps scales comparable when it is present.
    """

    def __init__(self, spec: FusionSpec, params: SharedParams) -> None:
        super().__init__(spec, params)
        self.norms = torch.nn.ModuleDict({m: torch.nn.LayerNorm(d) for m, d in spec.dims.items()})
        self.head = mlp_head(sum(spec.dims.values()), params.hidden_dim, spec.num_classes, params.dropout)

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        present = self.present(inputs)
        ref = inputs[present[0]]
        parts = [
            self.norms[m](inputs[m]) if m in inputs else ref.new_zeros(ref.shape[0], d)
            for m, d in self.spec.dims.items()
        ]
        return self.head(torch.cat(parts, dim=-1))
