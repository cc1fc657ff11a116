"""Multimodal Bottleneck Transformer (MBT): modalities exchange information only through a few
shared bottleneck tokens, after `fusion_layer` unimodal layers."""

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
    padding_mask,
    presence_weighted_mean,
    register_strategy,
)
from fusebench.strategies.token_layers import TokenProjection, encoder_layer


@dataclass(frozen=True)
class BottleneckParams(SharedParams):
    """`fusion_layer`: unimodal layers before fusion starts (MBT's L_f); `layers`: fusion layers from
    there on (same range as the other token models), so the depth is fusion_layer + layers."""

    bottlenecks: int = field(default=4, metadata=space.choice([2, 4, 8]))
    fusion_layer: int = field(default=0, metadata=space.int_range(0, 1))
    layers: int = field(default=1, metadata=space.int_range(1, 2))


@register_strategy(
    "mbt",
    family="mid",
    params=BottleneckParams,
    min_modalities=2,
    citation="Nagrani, Yang, Arnab, Jansen, Schmid & Sun (2021), Attention Bottlenecks for Multimodal Fusion, NeurIPS",
)
class AttentionBottleneck(ModalityAloneLogits, TokenProjection):
    """Multimodal Bottleneck Transformer: each modality's sequence, led by its own CLS token, runs
    `fusion_layer` unimodal transformer layers; then, per fusion layer, each modality runs its layer
    over [its tokens; bottlenecks] and the new bottlenecks are the average of the modalities' updated
    copies. Each modality's CLS is classified by one shared head; training minimises the mean of the
    per-modality cross-entropies and evaluation averages the logits, as in the reference.

    Missing modality: it does not update the bottlenecks and its logits are left out of the average.
    Per example, a modality that is all padding (e.g. zeroed by modality dropout) is treated the same
    way. `unimodal_logits` runs the network on each modality alone.
    """

    params: BottleneckParams

    def __init__(self, spec: FusionSpec, params: BottleneckParams) -> None:
        super().__init__(spec, params)
        h = params.hidden_dim
        self.cls = nn.ParameterDict({m: nn.Parameter(torch.randn(1, 1, h) * 0.02) for m in spec.dims})
        self.bottleneck = nn.Parameter(torch.randn(1, params.bottlenecks, h) * 0.02)
        self.unimodal_layers = nn.ModuleList(
            nn.ModuleDict({m: encoder_layer(h, params.dropout) for m in spec.dims}) for _ in range(params.fusion_layer)
        )
        self.fusion_layers = nn.ModuleList(
            nn.ModuleDict({m: encoder_layer(h, params.dropout) for m in spec.dims}) for _ in range(params.layers)
        )
        self.head = nn.Sequential(nn.LayerNorm(h), nn.Dropout(params.dropout), nn.Linear(h, spec.num_classes))

    def modality_logits(self, inputs: Mapping[str, Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """(each present modality's CLS logits `[B, C]`, its per-example presence `[B]`)."""
        toks = self.tokens(inputs)
        b = self.batch_size(inputs)
        nb = self.params.bottlenecks
        real = {m: padding_mask(inputs[m]) for m in toks}  # True = real token
        here = {m: r.any(1).to(self.bottleneck.dtype) for m, r in real.items()}
        no_pad = {m: r.new_zeros(b, 1) for m, r in real.items()}  # the CLS is never masked
        states = {m: torch.cat([self.cls[m].expand(b, -1, -1), t], 1) for m, (t, _) in toks.items()}
        pads = {m: torch.cat([no_pad[m], ~r], 1) for m, r in real.items()}
        for layer in self.unimodal_layers:
            states = {m: layer[m](x, src_key_padding_mask=pads[m]) for m, x in states.items()}
        z = self.bottleneck.expand(b, -1, -1)
        fused_pads = {m: torch.cat([p, p.new_zeros(b, nb)], 1) for m, p in pads.items()}
        for layer in self.fusion_layers:
            updates = []
            for m in states:
                out = layer[m](torch.cat([states[m], z], 1), src_key_padding_mask=fused_pads[m])
                states[m], zm = out[:, :-nb], out[:, -nb:]
                updates.append(zm.flatten(1))
            z = presence_weighted_mean(updates, list(here.values())).view(b, nb, -1)
        return [self.head(x[:, 0]) for x in states.values()], list(here.values())

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        return presence_weighted_mean(*self.modality_logits(inputs))

    def training_loss(self, inputs: Mapping[str, Tensor], labels: Tensor) -> Tensor:
        """As the reference trains MBT: the mean over modalities of each CLS head's cross-entropy
        (over the examples where the modality is present); the averaged logits are for evaluation."""
        total = 0.0
        for lg, w in zip(*self.modality_logits(inputs)):
            ce = F.cross_entropy(lg, labels, reduction="none")
            total = total + (ce * w).sum() / w.sum().clamp_min(1.0)
        return total / len(self.present(inputs))
