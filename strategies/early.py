"""Early fusion: modalities are joined at the input, before any modality-specific processing."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from fusebench.core import space
from fusebench.strategies.base import (
    FusionModel,
    FusionSpec,
    ModalityAloneLogits,
    SharedParams,
    input_norm,
    mlp_head,
    padding_mask,
    register_strategy,
)
from fusebench.strategies.token_layers import TokenProjection, encoder_layer


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
        self.norms = nn.ModuleDict({m: input_norm(d) for m, d in spec.dims.items()})
        self.head = mlp_head(sum(spec.dims.values()), params.hidden_dim, spec.num_classes, params.dropout)

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        present = self.present(inputs)
        ref = inputs[present[0]]
        parts = [
            self.norms[m](inputs[m]) if m in inputs else ref.new_zeros(ref.shape[0], d)
            for m, d in self.spec.dims.items()
        ]
        return self.head(torch.cat(parts, dim=-1))


@register_strategy(
    "early_sum",
    family="early",
    min_modalities=2,
    citation="Snoek, Worring & Smeulders (2005), Early versus Late Fusion in Semantic Video Analysis, ACM Multimedia",
)
class EarlySum(FusionModel):
    """Early fusion by addition: each modality is linearly mapped into one shared input space and
    the maps are summed before a single MLP (no modality-specific non-linearity).

    Missing modality: its term is left out of the sum (the mean over present terms is used, so the
    scale does not depend on how many are present).
    """

    def __init__(self, spec: FusionSpec, params: SharedParams) -> None:
        super().__init__(spec, params)
        h = params.hidden_dim
        self.maps = nn.ModuleDict({m: nn.Sequential(input_norm(d), nn.Linear(d, h)) for m, d in spec.dims.items()})
        self.head = mlp_head(h, h, spec.num_classes, params.dropout)

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        present = self.present(inputs)
        return self.head(torch.stack([self.maps[m](inputs[m]) for m in present], 0).mean(0))

    def unimodal_logits(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {m: self.head(self.maps[m](inputs[m])) for m in self.present(inputs)}


@dataclass(frozen=True)
class TransformerParams(SharedParams):
    layers: int = field(default=1, metadata=space.int_range(1, 2))


@register_strategy(
    "early_transformer",
    family="early",
    params=TransformerParams,
    min_modalities=2,
    citation="Li et al. (2019), VisualBERT: A Simple and Performant Baseline for Vision and Language, arXiv:1908.03557",
)
class SingleStreamTransformer(ModalityAloneLogits, TokenProjection):
    """Single-stream transformer: the token sequences of all modalities are projected, given learned
    positional and modality-type embeddings (as VisualBERT's position and segment embeddings),
    concatenated behind a CLS token and encoded jointly; the CLS output is classified.

    Missing modality: its tokens are simply not in the sequence; padding rows (and so a modality
    zeroed by modality dropout) are masked out of attention. The CLS token is never masked, so a
    sequence is never empty. `unimodal_logits` runs the network on each modality alone.
    """

    def __init__(self, spec: FusionSpec, params: TransformerParams) -> None:
        super().__init__(spec, params)
        h = params.hidden_dim
        self.cls = nn.Parameter(torch.randn(1, 1, h) * 0.02)
        self.encoder = nn.TransformerEncoder(encoder_layer(h, params.dropout), params.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(h)
        self.head = nn.Linear(h, spec.num_classes)

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        present = self.present(inputs)
        b = self.batch_size(inputs)
        seqs = [self.cls.expand(b, -1, -1)]
        pads = [torch.zeros(b, 1, dtype=torch.bool, device=self.cls.device)]
        for m in present:
            x = inputs[m]
            seqs.append(self.embed(m, x))
            pads.append(~padding_mask(x))
        out = self.encoder(torch.cat(seqs, 1), src_key_padding_mask=torch.cat(pads, 1))
        return self.head(self.norm(out[:, 0]))
