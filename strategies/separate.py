"""Classic late fusion: unimodal classifiers trained separately, then combined.

"Separately" is exact, not approximate: each per-modality classifier is trained only on its own
cross-entropy, and the combiner only on the classifiers' *detached* outputs, so no gradient of
the combination (or of another modality) ever reaches a classifier — the same parameters as
training each unimodal model on its own and fitting the combiner afterwards, in one pass.
(With gradient blending, the per-modality terms add weight to each classifier's own loss; the
classifiers stay separate.)
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fusebench.strategies.base import FusionSpec, SharedParams, input_norm, presence, register_strategy
from fusebench.strategies.late import PerModalityHeads


def separate_losses(logits: Mapping[str, Tensor], inputs: Mapping[str, Tensor], labels: Tensor) -> Tensor:
    """Σ_m cross-entropy of modality m's classifier over the examples where m is present."""
    total = 0.0
    for m, x in logits.items():
        w = presence(inputs[m])
        ce = F.cross_entropy(x, labels, reduction="none")
        total = total + (ce * w).sum() / w.sum().clamp_min(1.0)
    return total


def log_probs_or_uniform(logits: Mapping[str, Tensor], inputs: Mapping[str, Tensor], modalities: list[str],
                         detach: bool) -> list[tuple[Tensor, Tensor]]:
    """Per spec modality: (log-probabilities `[B, C]`, presence `[B]`); an absent modality gives the
    uniform log(1/C) with presence 0."""
    ref = next(iter(logits.values()))
    b, c = ref.shape
    out = []
    for m in modalities:
        if m in logits:
            lp = F.log_softmax(logits[m], -1)
            out.append((lp.detach() if detach else lp, presence(inputs[m]).to(lp.dtype)))
        else:
            out.append((ref.new_full((b, c), -math.log(c)), ref.new_zeros(b)))
    return out


@register_strategy(
    "separate_mean",
    family="late",
    min_modalities=2,
    citation=("Kittler, Hatef, Duin & Matas (1998), "
              "On Combining Classifiers, TPAMI 20(3) (sum rule over separately trained classifiers)"),
)
class SeparateMean(PerModalityHeads):
    """Classic late fusion (separately trained): the mean of the per-modality classifiers'
    probabilities (Kittler's sum rule); each classifier is trained only on its own loss.

    Missing modality: the mean runs over the modalities present in each example.
    """

    zeroed_is_absent = True

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        parts = log_probs_or_uniform(self.unimodal_logits(inputs), inputs, self.spec.modalities, detach=False)
        lp = torch.stack([p for p, _ in parts], 0)
        w = torch.stack([h for _, h in parts], 0)
        w = torch.where(w.sum(0, keepdim=True) > 0, w, torch.ones_like(w)).unsqueeze(-1)
        return torch.logsumexp(lp + torch.log(w.clamp_min(1e-30)), 0) - torch.log(w.sum(0))

    def training_loss(self, inputs: Mapping[str, Tensor], labels: Tensor) -> Tensor:
        return separate_losses(self.unimodal_logits(inputs), inputs, labels)


@register_strategy(
    "separate_weights",
    family="late",
    min_modalities=2,
    citation=("Atrey, Hossain, El Saddik & Kankanhalli (2010), "
              "Multimodal Fusion for Multimedia Analysis: a Survey, Multimedia Systems 16(6) "
              "(linear weighted decision-level fusion)"),
)
class SeparateWeights(PerModalityHeads):
    """Classic late fusion (separately trained) with learned weights: Σ_m softmax(w)_m · log p_m, the
    weights fitted on the classifiers' detached log-probabilities (M − 1 free parameters, so fitting
    them on in-sample predictions costs little; `stacking` is the out-of-fold variant).

    Missing modality: the weights are renormalised over the modalities present in each example.
    """

    zeroed_is_absent = True

    def __init__(self, spec: FusionSpec, params: SharedParams) -> None:
        super().__init__(spec, params)
        self.weights = nn.Parameter(torch.zeros(len(spec.dims)))

    def _combine(self, logits: Mapping[str, Tensor], inputs: Mapping[str, Tensor], detach: bool) -> Tensor:
        parts = log_probs_or_uniform(logits, inputs, self.spec.modalities, detach)
        here = torch.stack([h for _, h in parts], 1)  # [B, M]
        here = torch.where(here.sum(1, keepdim=True) > 0, here, torch.ones_like(here))
        w = self.weights.softmax(0) * here
        w = w / w.sum(1, keepdim=True)
        return sum(w[:, i : i + 1] * p for i, (p, _) in enumerate(parts))

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        return self._combine(self.unimodal_logits(inputs), inputs, detach=False)

    def training_loss(self, inputs: Mapping[str, Tensor], labels: Tensor) -> Tensor:
        logits = self.unimodal_logits(inputs)
        combined = self._combine(logits, inputs, detach=True)
        return separate_losses(logits, inputs, labels) + F.cross_entropy(combined, labels)


def fold_of(x: Tensor, folds: int, key: Tensor) -> Tensor:
    """Deterministic fold `[B]` in 0..folds-1 of each example from the content of its features `[B, D]`
    (a fixed random projection, hashed): the same features always land in the same fold, in every
    epoch and batch, so a fold's classifier never trains on an example whose prediction it supplies.
    Identical feature vectors (e.g. one image with five captions) share a fold."""
    s = (x.detach().double() * key.double()).sum(-1)
    return torch.remainder(torch.floor(s * 1e4), folds).long()


class FoldHeads(nn.Module):
    """K copies of a per-modality classifier (LayerNorm without parameters → Linear → GELU → Linear),
    evaluated together: `[B, D]` → `[K, B, C]`. Copy k is trained only on examples outside fold k."""

    def __init__(self, d: int, hidden: int, classes: int, folds: int, dropout: float) -> None:
        super().__init__()
        self.norm = input_norm(d, affine=False)
        self.w1 = nn.Parameter(torch.randn(folds, d, hidden) * d**-0.5)
        self.b1 = nn.Parameter(torch.zeros(folds, 1, hidden))
        self.w2 = nn.Parameter(torch.randn(folds, hidden, classes) * hidden**-0.5)
        self.b2 = nn.Parameter(torch.zeros(folds, 1, classes))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = F.gelu(torch.einsum("bd,kdh->kbh", self.norm(x), self.w1) + self.b1)
        return torch.einsum("kbh,khc->kbc", self.drop(h), self.w2) + self.b2


@register_strategy(
    "stacking",
    family="late",
    min_modalities=2,
    citation="Wolpert (1992), Stacked Generalization, Neural Networks 5(2)",
)
class Stacking(PerModalityHeads):
    """Classic late fusion (separately trained), stacked: a linear meta-learner over the per-modality
    classifiers' log-probabilities, fitted on out-of-fold level-0 predictions (Wolpert 1992).

    Each modality has `folds` classifiers; classifier k learns only from examples outside fold k (the
    fold is a hash of the modality's features, see `fold_of`), and the meta-learner learns from
    classifier fold(x)'s detached log-probabilities for x — a prediction made by a model that never
    trained on x. At inference the meta-learner sees the mean of the fold classifiers' log-probabilities
    (cross-validation committee). The level-0 classifiers learn only their own losses.

    Missing modality: its block of meta-features is the uniform log(1/C) (also per example, for a
    modality that is all zero).
    """

    zeroed_is_absent = True

    folds = 5  # level-0 folds (Wolpert's leave-one-out taken to K-fold, as usual)

    def __init__(self, spec: FusionSpec, params: SharedParams) -> None:
        super().__init__(spec, params)
        k, c = self.folds, spec.num_classes
        del self.heads
        self.heads = nn.ModuleDict({m: FoldHeads(d, params.hidden_dim, c, k, params.dropout) for m, d in spec.dims.items()})
        g = torch.Generator().manual_seed(20140817)
        for m, d in spec.dims.items():
            self.register_buffer(f"fold_key_{m}", torch.randn(d, generator=g), persistent=False)
        self.meta = nn.Linear(len(spec.dims) * c, c)

    def folds_of(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """modality → fold `[B]` of each example."""
        return {m: fold_of(inputs[m], self.folds, getattr(self, f"fold_key_{m}")) for m in self.present(inputs)}

    def fold_logits(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """modality → logits of every fold classifier `[K, B, C]`."""
        return {m: self.heads[m](inputs[m]) for m in self.present(inputs)}

    def unimodal_logits(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """In training, the mean over the fold classifiers that train on each example; in evaluation,
        the committee mean over all of them (log-probabilities)."""
        out = {}
        folds = self.folds_of(inputs)
        for m, lg in self.fold_logits(inputs).items():
            lp = F.log_softmax(lg, -1)
            if self.training:
                inside = F.one_hot(folds[m], self.folds).T.to(lp.dtype).unsqueeze(-1)  # [K, B, 1]
                out[m] = (lp * (1 - inside)).sum(0) / (1 - inside).sum(0)
            else:
                out[m] = lp.mean(0)
        return out

    def meta_features(self, inputs: Mapping[str, Tensor], out_of_fold: bool) -> Tensor:
        """`[B, M·C]`: per modality, the out-of-fold (training) or committee log-probabilities."""
        fl = self.fold_logits(inputs)
        folds = self.folds_of(inputs)
        per = {}
        for m, lg in fl.items():
            lp = F.log_softmax(lg, -1)
            if out_of_fold:
                per[m] = lp.detach()[folds[m], torch.arange(lp.shape[1], device=lp.device)]
            else:
                per[m] = lp.mean(0)
        parts = log_probs_or_uniform({m: v for m, v in per.items()}, inputs, self.spec.modalities, detach=False)
        blocks = [torch.where(h.unsqueeze(-1) > 0, p, torch.full_like(p, -math.log(p.shape[-1]))) for p, h in parts]
        return torch.cat(blocks, -1)

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        return self.meta(self.meta_features(inputs, out_of_fold=False))

    def training_loss(self, inputs: Mapping[str, Tensor], labels: Tensor) -> Tensor:
        folds = self.folds_of(inputs)
        base = 0.0
        for m, lg in self.fold_logits(inputs).items():
            outside = 1 - F.one_hot(folds[m], self.folds).T.to(lg.dtype)  # [K, B]
            outside = outside * presence(inputs[m]).to(lg.dtype)
            ce = F.cross_entropy(lg.flatten(0, 1), labels.repeat(lg.shape[0]), reduction="none").view_as(outside)
            base = base + ((ce * outside).sum(1) / outside.sum(1).clamp_min(1.0)).sum()
        return base + F.cross_entropy(self.meta(self.meta_features(inputs, out_of_fold=True)), labels)
