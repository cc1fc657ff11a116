"""Late fusion: one classifier per modality, combined at the decision (logit) level."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fusebench.strategies.base import FusionModel, FusionSpec, SharedParams, mlp_head, register_strategy


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


@register_strategy(
    "learned_weights",
    family="late",
    min_modalities=2,
    citation="Atrey, Hossain, El Saddik & Kankanhalli (2010), Multimodal Fusion for Multimedia Analysis: a Survey, Multimedia Systems 16(6) (linear weighted decision-level fusion)",
)
class LearnedWeights(PerModalityHeads):
    """Late fusion with learned modality weights: logits = Σ_m softmax(w)_m · logits_m, one global
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
    citation="Hinton (2002), Training Products of Experts by Minimizing Contrastive Divergence, Neural Computation 14(8)",
)
class ProductOfExperts(PerModalityHeads):
    """Product of experts: the fused distribution is ∝ Π_m p_m(y|x_m), i.e. log-probabilities add.

    Missing modality: its expert is left out of the product (the remaining experts decide).
    """

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        return sum(F.log_softmax(x, dim=-1) for x in self.unimodal_logits(inputs).values())


@register_strategy(
    "stacking",
    family="late",
    min_modalities=2,
    citation="Wolpert (1992), Stacked Generalization, Neural Networks 5(2)",
)
class Stacking(PerModalityHeads):
    """Stacking: a linear meta-learner over the per-modality class probabilities.

    Training (see `training_loss`): each per-modality head learns from its own cross-entropy; the
    meta-learner learns from the heads' *detached* probabilities, so it fits on the base models'
    predictions without changing them — a single-pass stand-in for fitting on out-of-fold
    predictions, with early stopping on the validation split guarding against the optimism of
    in-sample predictions.

    With gradient blending the blender's fused term is this `training_loss` (so the meta-learner
    still sees detached probabilities) and the per-modality terms add weight to the heads.

    Missing modality: its probability block is replaced by the uniform distribution 1/C.
    """

    def __init__(self, spec: FusionSpec, params: SharedParams) -> None:
        super().__init__(spec, params)
        self.meta = nn.Linear(len(spec.dims) * spec.num_classes, spec.num_classes)

    def _meta(self, logits: Mapping[str, Tensor], detach: bool) -> Tensor:
        ref = next(iter(logits.values()))
        c = self.spec.num_classes
        blocks = []
        for m in self.spec.modalities:
            if m in logits:
                p = logits[m].softmax(-1)
                blocks.append(p.detach() if detach else p)
            else:
                blocks.append(ref.new_full((ref.shape[0], c), 1.0 / c))
        return self.meta(torch.cat(blocks, -1))

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        return self._meta(self.unimodal_logits(inputs), detach=False)

    def training_loss(self, inputs: Mapping[str, Tensor], labels: Tensor) -> Tensor:
        logits = self.unimodal_logits(inputs)
        base = sum(F.cross_entropy(x, labels) for x in logits.values())
        return base + F.cross_entropy(self._meta(logits, detach=True), labels)
