"""Late fusion: one classifier per modality, combined at the decision (logit) level."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from strategies.base import FusionModel, FusionSpec, SharedParams, mlp_head, register_strategy


class PerModalityHeads(FusionModel):
    """Shared machinery of late strategies: an MLP classifier per modality."""

    def __init__(self, spec: FusionSpec, params: SharedParams) -> None:
        super().__init__(spec, params)
        self.heads = nn.ModuleDict(
            {
                m: nn.Sequential(nn.LayerNorm(d), mlp_head(d, params.hidden_dim, spec.num_classes, params.dropout))
                for m, d in spec.dims.items()
            }
        )

    def unimodal_logits(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {m: self.heads[m](inputs[m]) for m in self.present(inputs)}


@register_strategy(
    "logit_mean",
    family="late",
    min_modalities=2,
    citation="Kittler, Hatef, Duin & Matas (1998), On Combining Classifiers, TPAMI 20(3)",
)
class LogitMean(PerModalityHeads):
    """Late fusion by averaging the logits of per-modality classifiers, trained jointly.

    Missing modality: the mean runs over the modalities that are present.
    """

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        return torch.stack(list(self.unimodal_logits(inputs).values()), 0).mean(0)
