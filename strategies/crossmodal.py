"""Crossmodal-attention fusion of token sequences: MulT and ViLBERT-style co-attention."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from fusebench.core import space
from fusebench.strategies.base import (
    FusionSpec,
    ModalityAloneLogits,
    SharedParams,
    mlp_head,
    padding_mask,
    presence,
    register_strategy,
)
from fusebench.strategies.token_layers import (
    CrossAttentionLayer,
    TokenProjection,
    encoder_layer,
    last_real,
    partner_keys,
)


@dataclass(frozen=True)
class MulTParams(SharedParams):
    """`layers`: depth of each crossmodal transformer (same range as the other token models);
    `self_layers`: depth of the self-attention transformer over each target's crossmodal streams."""

    layers: int = field(default=1, metadata=space.int_range(1, 2))
    self_layers: int = field(default=1, metadata=space.int_range(1, 2))


@register_strategy(
    "mult",
    family="mid",
    params=MulTParams,
    min_modalities=2,
    citation=("Tsai, Bai, Liang, Kolter, Morency & Salakhutdinov (2019), "
              "Multimodal Transformer for Unaligned Multimodal Language Sequences, ACL"),
)
class MulT(ModalityAloneLogits, TokenProjection):
    """Multimodal Transformer (MulT): for every ordered pair (target m, source s) a stack of crossmodal
    transformer layers lets m's tokens attend to s's tokens (one LayerNorm on queries and keys/values);
    each target's crossmodal streams are concatenated feature-wise and encoded by a self-attention
    transformer; the last real element of each target is read out, the targets' readouts are
    concatenated and classified through a residual block, as in the reference.

    Missing modality: an absent source gives its pairs no attention update (the crossmodal layers
    reduce to their feed-forward halves); an absent target contributes a zero readout. Per example,
    a modality that is all padding (e.g. zeroed by modality dropout) is treated the same way.
    `unimodal_logits` runs the network on each modality alone.
    """

    def __init__(self, spec: FusionSpec, params: MulTParams) -> None:
        super().__init__(spec, params)
        h, mods = params.hidden_dim, spec.modalities
        self.pairs = [(m, s) for m in mods for s in mods if s != m]
        self.cross = nn.ModuleDict(
            {f"{m}>{s}": nn.ModuleList(CrossAttentionLayer(h, params.dropout) for _ in range(params.layers))
             for m, s in self.pairs}
        )
        width = h * (len(mods) - 1)
        self.mem = nn.ModuleDict(
            {m: nn.TransformerEncoder(encoder_layer(width, params.dropout), params.self_layers, enable_nested_tensor=False)
             for m in mods}
        )
        combined = width * len(mods)
        self.proj1 = nn.Linear(combined, combined)
        self.proj2 = nn.Linear(combined, combined)
        self.drop = nn.Dropout(params.dropout)
        self.out = nn.Linear(combined, spec.num_classes)

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        toks = self.tokens(inputs)
        real = {m: padding_mask(inputs[m]) for m in toks}  # True = real token
        ref = next(iter(toks.values()))[0]
        b, h = ref.shape[0], self.params.hidden_dim
        readouts = []
        for m in self.spec.modalities:
            if m not in toks:
                readouts.append(ref.new_zeros(b, h * (len(self.spec.modalities) - 1)))
                continue
            x0, pad = toks[m]
            streams = []
            for s in self.spec.modalities:
                if s == m:
                    continue
                if s in toks:
                    y, y_real = toks[s][0], real[s]
                else:  # absent source: one dummy key, masked out of every row
                    y, y_real = ref.new_zeros(b, 1, h), torch.zeros(b, 1, dtype=torch.bool, device=ref.device)
                y_pad, has = partner_keys([y_real])
                x = x0
                for layer in self.cross[f"{m}>{s}"]:
                    x = layer(x, y, y_pad, has)
                streams.append(x)
            hs = self.mem[m](torch.cat(streams, -1), src_key_padding_mask=pad)
            readouts.append(last_real(hs, real[m]) * presence(inputs[m]).view(-1, 1))
        z = torch.cat(readouts, -1)
        z = z + self.proj2(self.drop(torch.relu(self.proj1(z))))
        return self.out(z)


@dataclass(frozen=True)
class CoAttentionParams(SharedParams):
    layers: int = field(default=1, metadata=space.int_range(1, 2))


@register_strategy(
    "coattention",
    family="mid",
    params=CoAttentionParams,
    min_modalities=2,
    citation=("Lu, Batra, Parikh & Lee (2019), "
              "ViLBERT: Pretraining Task-Agnostic Visiolinguistic Representations for Vision-and-Language Tasks, NeurIPS"),
)
class CoAttention(ModalityAloneLogits, TokenProjection):
    """ViLBERT-style co-attention transformer: one stream per modality, each led by its own CLS token;
    every layer is a co-attention block (each stream's queries attend to the other streams' current
    tokens, all streams updated simultaneously) followed by a self-attention layer per stream. The
    streams' pooled CLS vectors (dense + tanh) are multiplied element-wise, as ViLBERT fuses h_IMG ⊙
    h_CLS, and classified.

    Missing modality: an absent stream is no key for the others and is left out of the product (a
    stream with no partner gets no co-attention update). Per example, a modality that is all padding
    (e.g. zeroed by modality dropout) is treated the same way. `unimodal_logits` runs the network on
    each modality alone.
    """

    def __init__(self, spec: FusionSpec, params: CoAttentionParams) -> None:
        super().__init__(spec, params)
        h = params.hidden_dim
        self.cls = nn.ParameterDict({m: nn.Parameter(torch.randn(1, 1, h) * 0.02) for m in spec.dims})
        self.co = nn.ModuleList(
            nn.ModuleDict({m: CrossAttentionLayer(h, params.dropout) for m in spec.dims}) for _ in range(params.layers)
        )
        self.own = nn.ModuleList(
            nn.ModuleDict({m: encoder_layer(h, params.dropout) for m in spec.dims}) for _ in range(params.layers)
        )
        self.pool = nn.ModuleDict({m: nn.Sequential(nn.Linear(h, h), nn.Tanh()) for m in spec.dims})
        self.head = mlp_head(h, h, spec.num_classes, params.dropout)

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        toks = self.tokens(inputs)
        b = self.batch_size(inputs)
        here = {m: padding_mask(inputs[m]).any(1) for m in toks}
        # a stream's CLS counts as a real key only where its modality is present in the example
        real = {m: torch.cat([here[m].unsqueeze(1), padding_mask(inputs[m])], 1) for m in toks}
        own_pad = {m: torch.cat([torch.zeros_like(here[m]).unsqueeze(1), ~padding_mask(inputs[m])], 1) for m in toks}
        x = {m: torch.cat([self.cls[m].expand(b, -1, -1), t], 1) for m, (t, _) in toks.items()}
        for co, own in zip(self.co, self.own):
            new = {}
            for m, xm in x.items():
                others = [s for s in x if s != m]
                if others:
                    y_pad, has = partner_keys([real[s] for s in others])
                    new[m] = co[m](xm, torch.cat([x[s] for s in others], 1), y_pad, has)
                else:
                    new[m] = co[m](xm, xm[:, :1], torch.zeros(b, 1, dtype=torch.bool, device=xm.device),
                                   torch.zeros(b, dtype=torch.bool, device=xm.device))
            x = {m: own[m](new[m], src_key_padding_mask=own_pad[m]) for m in new}
        fused = None
        for m, xm in x.items():
            w = here[m].to(xm.dtype).unsqueeze(-1)
            pooled = w * self.pool[m](xm[:, 0]) + (1 - w)  # absent in this example: the product's identity
            fused = pooled if fused is None else fused * pooled
        return self.head(fused)
