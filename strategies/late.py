"""Late fusion trained jointly: one classifier per modality, combined at the decision level and
trained end to end through the combination. Classic late fusion (separately trained classifiers)
is in `separate.py`."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fusebench.strategies.base import FusionModel, FusionSpec, SharedParams, input_norm, mlp_head, presence, register_strategy


class PerModalityHeads(FusionModel):
    """Shared machinery of late strategies: an MLP classifier per modality."""

    def __init__(self, spec: FusionSpec, params: SharedParams) -> None:
        super().__init__(spec, params)
        self.heads = nn.ModuleDict(
            {
                m: nn.Sequential(input_norm(d), mlp_head(d, params.hidden_dim, spec.num_classes, params.dropout))
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
    """Late fusion (jointly trained): the mean of the per-modality classifiers' logits.

    Missing modality: the mean runs over the modalities that are present.
    """

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        return torch.stack(list(self.unimodal_logits(inputs).values()), 0).mean(0)


@register_strategy(
    "learned_weights",
    family="late",
    min_modalities=2,
    citation=("Atrey, Hossain, El Saddik & Kankanhalli (2010), "
              "Multimodal Fusion for Multimedia Analysis: a Survey, Multimedia Systems 16(6) "
              "(linear weighted decision-level fusion)"),
)
class LearnedWeights(PerModalityHeads):
    """Late fusion (jointly trained) with learned modality weights: logits = Σ_m softmax(w)_m · logits_m, one global
    weight per modality learned jointly with the heads.

    Missing modality: the weights are renormalised over the present modalities.
    """

    def __init__(self, spec: FusionSpec, params: SharedParams) -> None:
        super().__init__(spec, params)
        self.weights = nn.ParameterDict({m: nn.Parameter(torch.zeros(())) for m in spec.dims})

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        logits = self.unimodal_logits(inputs)
        w = torch.stack([self.weights[m] for m in logits]).softmax(0)
        return sum(w[i] * x for i, x in enumerate(logits.values()))


@register_strategy(
    "product_of_experts",
    family="late",
    min_modalities=2,
    citation=("Cao & Fleet (2014), "
              "Generalized Product of Experts for Automatic and Principled Fusion of Gaussian Process Predictions, "
              "arXiv:1410.7827; "
              "Hinton (2002), Training Products of Experts by Minimizing Contrastive Divergence, Neural Computation 14(8)"),
)
class ProductOfExperts(PerModalityHeads):
    """Generalised product of experts, trained jointly: p(y|x) ∝ Π_m p_m(y|x_m)^{α_m(x_m)} with a
    learned, per-expert and per-example precision α_m(x_m) = softplus(a_m · LN(x_m) + b_m) ≥ 0, so
    an expert's vote is sharpened or flattened by how reliable its input looks (with every α_m = 1
    it is Hinton's product of experts; it is not the logit mean, whose weights are fixed at 1/M).

    Missing modality: its expert is left out of the product (α = 0); per example, a modality that is
    all zero (e.g. zeroed by modality dropout) is treated the same way.
    """

    zeroed_is_absent = True

    def __init__(self, spec: FusionSpec, params: SharedParams) -> None:
        super().__init__(spec, params)
        self.precision = nn.ModuleDict({m: nn.Sequential(input_norm(d, affine=False), nn.Linear(d, 1))
                                        for m, d in spec.dims.items()})
        for net in self.precision.values():  # start at α = 1: the plain product of experts
            nn.init.zeros_(net[1].weight)
            nn.init.constant_(net[1].bias, math.log(math.e - 1.0))

    def alphas(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """modality → precision α_m `[B, 1]` (0 where the modality is all zero)."""
        return {m: F.softplus(self.precision[m](inputs[m])) * presence(inputs[m]).unsqueeze(-1) for m in self.present(inputs)}

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        alphas = self.alphas(inputs)
        return sum(alphas[m] * F.log_softmax(x, dim=-1) for m, x in self.unimodal_logits(inputs).items())
