"""Multiplicative fusion of pooled modalities: Tensor Fusion, Low-rank Multimodal Fusion, MFB.

TFN and LMF share their modality sub-networks (`ProjectedModalities` to `factor_dim`) and their
post-fusion head, so that LMF is exactly TFN with the first post-fusion layer's weight tensor
decomposed into `rank` modality-specific factors (the property tests check that full rank
recovers TFN's product).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fusebench.core import space
from fusebench.strategies.base import (
    FusionSpec,
    ModalityAloneLogits,
    SharedParams,
    mlp_head,
    presence,
    register_strategy,
)
from fusebench.strategies.mid import ProjectedModalities


def with_one(h: Tensor) -> Tensor:
    """[h; 1]: the appended 1 keeps the lower-order (unimodal, bimodal) terms in a product."""
    return torch.cat([h, h.new_ones(h.shape[0], 1)], -1)


def tensor_product(zs: list[Tensor]) -> Tensor:
    """Flattened outer product of `[B, d_m]` vectors: `[B, Π d_m]` (TFN's Z)."""
    fused = zs[0]
    for z in zs[1:]:
        fused = (fused.unsqueeze(-1) * z.unsqueeze(1)).flatten(1)
    return fused


class LowRankLayer(nn.Module):
    """h = Σ_r λ_r Π_m (z_m W_m^r) + b: a linear map of the outer product of the z_m whose weight
    tensor is a rank-R CP decomposition (Liu et al. 2018, eq. 5–6)."""

    def __init__(self, in_dims: list[int], out_dim: int, rank: int) -> None:
        super().__init__()
        self.factors = nn.ParameterList(nn.Parameter(torch.randn(rank, d, out_dim) * d**-0.5) for d in in_dims)
        self.rank_weights = nn.Parameter(torch.full((rank,), 1.0 / rank))
        self.bias = nn.Parameter(torch.zeros(out_dim))

    def forward(self, zs: list[Tensor]) -> Tensor:
        fused = None
        for z, w in zip(zs, self.factors):
            part = torch.einsum("bd,rdh->brh", z, w)
            fused = part if fused is None else fused * part
        return torch.einsum("r,brh->bh", self.rank_weights, fused) + self.bias


# The width of each modality's representation before the product. The references search 4-32 for
# their low-dimensional inputs (COVAREP audio 74-d, FACET video 35-47-d) and 64-256 for 300-d GloVe
# text (Justin1904/Low-rank-Multimodal-Fusion train_*.py, TensorFusionNetworks); every fusebench view
# is 128-1280-d, and {4, 8, 16} made both strategies a 16-d bottleneck: on ESC-50's 48 classes, fixed
# defaults gave lmf 0.15 and tensor_fusion 0.23 against concat 0.53 (a 64-d lmf 0.36; docs/strategies.md).
FACTOR_DIMS = [8, 16, 32, 64]


@dataclass(frozen=True)
class TensorParams(SharedParams):
    factor_dim: int = field(default=16, metadata=space.choice(FACTOR_DIMS))


@register_strategy(
    "tensor_fusion",
    family="mid",
    params=TensorParams,
    min_modalities=2,
    citation="Zadeh, Chen, Poria, Cambria & Morency (2017), Tensor Fusion Network for Multimodal Sentiment Analysis, EMNLP",
)
class TensorFusion(ModalityAloneLogits, ProjectedModalities):
    """Tensor Fusion Network: the outer product of [h_m; 1] over modalities (all uni-, bi- and
    tri-modal interactions), flattened into an MLP. Each modality is first projected to `factor_dim`
    (at most 64: three modalities give 65³ ≈ 275k product features, the reference's text × audio ×
    video product 129 × 33 × 33 ≈ 140k).

    Missing modality: its vector becomes [0, …, 0, 1], so only the interactions among present
    modalities survive (the appended 1 carries the lower-order terms); per example, a modality that
    is all zero (e.g. zeroed by modality dropout) is treated the same way. `unimodal_logits` runs the
    network on each modality alone.
    """

    zeroed_is_absent = True

    def __init__(self, spec: FusionSpec, params: TensorParams) -> None:
        super().__init__(spec, params, out_dim=params.factor_dim)
        size = (params.factor_dim + 1) ** len(spec.dims)
        self.head = mlp_head(size, params.hidden_dim, spec.num_classes, params.dropout)

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        return self.head(tensor_product([with_one(h) for h in self.project_all(inputs).values()]))


@dataclass(frozen=True)
class LowRankParams(TensorParams):
    rank: int = field(default=4, metadata=space.choice([1, 4, 8, 16]))  # the reference grid's ranks


@register_strategy(
    "lmf",
    family="mid",
    params=LowRankParams,
    min_modalities=2,
    citation=("Liu, Shen, Lakshminarasimhan, Liang, Zadeh & Morency (2018), "
              "Efficient Low-rank Multimodal Fusion with Modality-Specific Factors, ACL"),
)
class LowRankFusion(ModalityAloneLogits, ProjectedModalities):
    """Low-rank Multimodal Fusion: small learned modality representations h_m (`factor_dim`, the
    same sub-networks as tensor_fusion), fused as Σ_r λ_r Π_m (W_m^r [h_m; 1]) — TFN's first
    post-fusion layer with its weight tensor in rank-`rank` factors, linear in the number of
    modalities — then TFN's post-fusion head.

    Missing modality: its vector becomes [0, …, 0, 1], leaving only its bias factor in the product;
    per example, a modality that is all zero is treated the same way. `unimodal_logits` runs the
    network on each modality alone.
    """

    zeroed_is_absent = True

    def __init__(self, spec: FusionSpec, params: LowRankParams) -> None:
        super().__init__(spec, params, out_dim=params.factor_dim)
        h = params.hidden_dim
        self.fusion = LowRankLayer([params.factor_dim + 1] * len(spec.dims), h, params.rank)
        self.head = nn.Sequential(nn.GELU(), nn.Dropout(params.dropout), nn.Linear(h, spec.num_classes))

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        return self.head(self.fusion([with_one(h) for h in self.project_all(inputs).values()]))


@dataclass(frozen=True)
class MFBParams(SharedParams):
    """`factor_k`: MFB's k, the number of factors sum-pooled into each output unit (the paper uses 5;
    k = 1 would be MLB); the output size o is hidden_dim."""

    factor_k: int = field(default=5, metadata=space.choice([2, 3, 5]))


@register_strategy(
    "mfb",
    family="mid",
    params=MFBParams,
    min_modalities=2,
    citation=("Yu, Yu, Fan & Tao (2017), "
              "Multi-modal Factorized Bilinear Pooling with Co-Attention Learning for Visual Question Answering, ICCV"),
)
class FactorizedBilinear(ModalityAloneLogits, ProjectedModalities):
    """Multimodal Factorised Bilinear pooling: each modality is mapped to k·o dimensions (U^T x,
    V^T y), the maps are multiplied element-wise, dropped out, sum-pooled over non-overlapping
    windows of k, then power-normalised (signed square root) and L2-normalised before the classifier.
    With three modalities the element-wise product runs over all three maps.

    Missing modality: its map is left out of the product; per example, a modality that is all zero
    (e.g. zeroed by modality dropout) is treated the same way. `unimodal_logits` runs the network on
    each modality alone.
    """

    zeroed_is_absent = True
    params: MFBParams

    def __init__(self, spec: FusionSpec, params: MFBParams) -> None:
        super().__init__(spec, params, out_dim=params.factor_k * params.hidden_dim, act=False)
        self.drop = nn.Dropout(params.dropout)
        self.head = nn.Linear(params.hidden_dim, spec.num_classes)

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        joint = None
        for m, h in self.project(inputs).items():
            w = presence(inputs[m]).unsqueeze(-1)
            h = w * h + (1 - w)  # absent in this example: the product's identity
            joint = h if joint is None else joint * h
        assert joint is not None
        z = self.drop(joint).view(joint.shape[0], self.params.hidden_dim, self.params.factor_k).sum(-1)
        z = torch.sign(z) * torch.sqrt(z.abs() + 1e-8)
        return self.head(F.normalize(z, dim=-1))
