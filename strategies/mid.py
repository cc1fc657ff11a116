"""Mid (intermediate) fusion: modality-specific encoders, fused in a learned hidden space."""

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
    key_padding,
    masked_mean,
    mlp_head,
    padding_mask,
    pick_heads,
    presence,
    presence_weighted_mean,
    register_strategy,
)


class ProjectedModalities(FusionModel):
    """Shared machinery: LayerNorm + Linear(+GELU) projection of each pooled modality to hidden_dim."""

    def __init__(self, spec: FusionSpec, params: SharedParams, out_dim: int | None = None, act: bool = True) -> None:
        super().__init__(spec, params)
        h = out_dim or params.hidden_dim
        self.proj = nn.ModuleDict(
            {m: nn.Sequential(nn.LayerNorm(d), nn.Linear(d, h), *([nn.GELU()] if act else [])) for m, d in spec.dims.items()}
        )

    def project(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {m: self.proj[m](inputs[m]) for m in self.present(inputs)}


@register_strategy(
    "gmu",
    family="mid",
    min_modalities=2,
    citation="Arevalo, Solorio, Montes-y-Gómez & González (2017), Gated Multimodal Units for Information Fusion, ICLR workshop",
)
class GatedMultimodalUnit(ProjectedModalities):
    """Gated Multimodal Unit: h = Σ_m z_m ⊙ tanh(W_m x_m), gates z = softmax over modalities.

    The gates are computed from the projected modalities and their mean. Missing modality:
    excluded from the gate softmax and the sum.
    """

    def __init__(self, spec: FusionSpec, params: SharedParams) -> None:
        super().__init__(spec, params, act=False)
        h = params.hidden_dim
        self.gate = nn.ModuleDict({m: nn.Linear(h, 1) for m in spec.dims})
        self.head = mlp_head(h, h, spec.num_classes, params.dropout)

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        hidden = self.project(inputs)
        context = torch.stack(list(hidden.values()), 0).mean(0)
        gates = torch.cat([self.gate[m](context + h) for m, h in hidden.items()], dim=-1).softmax(-1)
        fused = sum(gates[:, i : i + 1] * torch.tanh(h) for i, h in enumerate(hidden.values()))
        return self.head(fused)

    def unimodal_logits(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Each modality alone through the same unit (its gate is then 1)."""
        return {m: self.head(torch.tanh(h)) for m, h in self.project(inputs).items()}


@dataclass(frozen=True)
class TensorParams(SharedParams):
    factor_dim: int = field(default=8, metadata=space.choice([4, 8, 16]))


@register_strategy(
    "tensor_fusion",
    family="mid",
    params=TensorParams,
    min_modalities=2,
    citation="Zadeh, Chen, Poria, Cambria & Morency (2017), Tensor Fusion Network for Multimodal Sentiment Analysis, EMNLP",
)
class TensorFusion(ModalityAloneLogits, ProjectedModalities):
    """Tensor Fusion Network: the outer product of [h_m; 1] over modalities (all uni-, bi- and
    tri-modal interactions), flattened into an MLP. Each modality is first projected to a small
    `factor_dim` so three modalities stay tractable.

    Missing modality: its vector becomes [0, …, 0, 1], so only the interactions among present
    modalities survive (the appended 1 carries the lower-order terms). `unimodal_logits` runs the
    network on each modality alone.
    """

    def __init__(self, spec: FusionSpec, params: TensorParams) -> None:
        super().__init__(spec, params, out_dim=params.factor_dim)
        size = (params.factor_dim + 1) ** len(spec.dims)
        self.head = mlp_head(size, params.hidden_dim, spec.num_classes, params.dropout)

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        hidden = self.project(inputs)
        ref = next(iter(hidden.values()))
        b = ref.shape[0]
        one = ref.new_ones(b, 1)
        fused = one
        for m in self.spec.modalities:
            h = hidden[m] if m in hidden else ref.new_zeros(b, self.params.factor_dim)
            z = torch.cat([h, one], dim=-1)
            fused = (fused.unsqueeze(-1) * z.unsqueeze(1)).flatten(1)
        return self.head(fused)


@dataclass(frozen=True)
class LowRankParams(SharedParams):
    rank: int = field(default=4, metadata=space.choice([2, 4, 8]))


@register_strategy(
    "lmf",
    family="mid",
    params=LowRankParams,
    min_modalities=2,
    citation="Liu, Shen, Lakshminarasimhan, Liang, Zadeh & Morency (2018), Efficient Low-rank Multimodal Fusion with Modality-Specific Factors, ACL",
)
class LowRankFusion(ModalityAloneLogits, FusionModel):
    """Low-rank Multimodal Fusion: the tensor-fusion weight decomposed into `rank` modality-specific
    factors, fused = Σ_r λ_r Π_m (W_m^r [x_m; 1]) — linear in the number of modalities.

    Missing modality: its input is [0, …, 0, 1], leaving only its bias factor in the product.
    `unimodal_logits` runs the network on each modality alone.
    """

    def __init__(self, spec: FusionSpec, params: LowRankParams) -> None:
        super().__init__(spec, params)
        h, r = params.hidden_dim, params.rank
        self.norms = nn.ModuleDict({m: nn.LayerNorm(d) for m, d in spec.dims.items()})
        self.factors = nn.ParameterDict(
            {m: nn.Parameter(torch.randn(r, d + 1, h) * (d + 1) ** -0.5) for m, d in spec.dims.items()}
        )
        self.rank_weights = nn.Parameter(torch.full((1, r), 1.0 / r))
        self.bias = nn.Parameter(torch.zeros(h))
        self.head = mlp_head(h, h, spec.num_classes, params.dropout)

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        present = self.present(inputs)
        ref = inputs[present[0]]
        b = ref.shape[0]
        fused = None
        for m, d in self.spec.dims.items():
            x = self.norms[m](inputs[m]) if m in inputs else ref.new_zeros(b, d)
            z = torch.cat([x, ref.new_ones(b, 1)], dim=-1)
            part = torch.einsum("bd,rdh->brh", z, self.factors[m])
            fused = part if fused is None else fused * part
        out = torch.einsum("or,brh->bh", self.rank_weights, fused) + self.bias
        return self.head(out)


@dataclass(frozen=True)
class FiLMParams(SharedParams):
    conditioner: int = field(default=0, metadata=space.choice([0, 1, 2]))


@register_strategy(
    "film",
    family="mid",
    params=FiLMParams,
    min_modalities=2,
    citation="Perez, Strub, de Vries, Dumoulin & Courville (2018), FiLM: Visual Reasoning with a General Conditioning Layer, AAAI",
)
class FiLMFusion(ProjectedModalities):
    """FiLM conditioning: one modality (the `conditioner`, an index into the sorted modalities taken
    modulo their number, so which one is searched) predicts a per-feature scale and shift
    (γ ⊙ h + β) for each other modality's hidden vector; the conditioner's own vector and the
    modulated vectors are averaged and classified.

    Missing modality: an absent conditioned modality is left out of the average; when the
    conditioner is absent the others pass through unmodulated (γ = 1, β = 0), which is also what
    `unimodal_logits` gives per modality.
    """

    def __init__(self, spec: FusionSpec, params: FiLMParams) -> None:
        super().__init__(spec, params)
        h = params.hidden_dim
        self.conditioner = spec.modalities[params.conditioner % len(spec.modalities)]
        self.film = nn.ModuleDict({m: nn.Linear(h, 2 * h) for m in spec.dims if m != self.conditioner})
        for lin in self.film.values():  # start as the identity modulation
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
        self.head = mlp_head(h, h, spec.num_classes, params.dropout)

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        hidden = self.project(inputs)
        cond = hidden.get(self.conditioner)
        out = []
        for m, h in hidden.items():
            if m != self.conditioner and cond is not None:
                gamma, beta = self.film[m](cond).chunk(2, dim=-1)
                h = (1 + gamma) * h + beta
            out.append(h)
        return self.head(torch.stack(out, 0).mean(0))

    def unimodal_logits(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {m: self.head(h) for m, h in self.project(inputs).items()}


@register_strategy(
    "attention_weights",
    family="mid",
    min_modalities=2,
    citation="Hori et al. (2017), Attention-Based Multimodal Fusion for Video Description, ICCV",
)
class AttentionWeights(ProjectedModalities):
    """Learned attention over modalities: α = softmax_m(w · tanh(U h_m)), fused = Σ α_m h_m,
    so the model weighs modalities per example.

    Missing modality: the softmax runs over present modalities only.
    """

    def __init__(self, spec: FusionSpec, params: SharedParams) -> None:
        super().__init__(spec, params)
        h = params.hidden_dim
        self.score = nn.Sequential(nn.Linear(h, h), nn.Tanh(), nn.Linear(h, 1, bias=False))
        self.head = mlp_head(h, h, spec.num_classes, params.dropout)

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        hidden = torch.stack(list(self.project(inputs).values()), 1)  # [B, M, H]
        alpha = self.score(hidden).softmax(1)
        return self.head((alpha * hidden).sum(1))

    def unimodal_logits(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {m: self.head(h) for m, h in self.project(inputs).items()}


class TokenProjection(FusionModel):
    """Shared machinery of token strategies: per-modality Linear to hidden_dim + modality embedding."""

    input_kind = "tokens"

    def __init__(self, spec: FusionSpec, params: SharedParams) -> None:
        super().__init__(spec, params)
        h = params.hidden_dim
        self.proj = nn.ModuleDict({m: nn.Linear(d, h) for m, d in spec.dims.items()})
        self.modality_emb = nn.ParameterDict({m: nn.Parameter(torch.randn(h) * 0.02) for m in spec.dims})

    def tokens(self, inputs: Mapping[str, Tensor]) -> dict[str, tuple[Tensor, Tensor]]:
        """modality → (projected tokens [B, T, H], key padding mask [B, T] True = pad)."""
        return {m: (self.proj[m](inputs[m]) + self.modality_emb[m], key_padding(inputs[m])) for m in self.present(inputs)}


@register_strategy(
    "mult",
    family="mid",
    min_modalities=2,
    citation="Tsai, Bai, Liang, Kolter, Morency & Salakhutdinov (2019), Multimodal Transformer for Unaligned Multimodal Language Sequences, ACL",
)
class MulT(ModalityAloneLogits, TokenProjection):
    """Cross-modal attention (MulT-style): each modality's tokens attend (as queries) to the tokens
    of all other modalities, with residual + feed-forward; the attended sequences are mean-pooled
    over real tokens and averaged across modalities.

    Missing modality: it is neither a query nor a key; a modality with no present partner skips
    the cross-attention (identity). The same holds per example for a modality that is all padding
    (e.g. zeroed by modality dropout): it contributes no keys and is left out of the final average.
    `unimodal_logits` runs the network on each modality alone.
    """

    def __init__(self, spec: FusionSpec, params: SharedParams) -> None:
        super().__init__(spec, params)
        h = params.hidden_dim
        self.attn = nn.ModuleDict(
            {m: nn.MultiheadAttention(h, pick_heads(h), dropout=params.dropout, batch_first=True) for m in spec.dims}
        )
        self.norm_q = nn.ModuleDict({m: nn.LayerNorm(h) for m in spec.dims})
        self.ffn = nn.ModuleDict(
            {m: nn.Sequential(nn.LayerNorm(h), nn.Linear(h, 2 * h), nn.GELU(), nn.Linear(2 * h, h)) for m in spec.dims}
        )
        self.head = mlp_head(h, h, spec.num_classes, params.dropout)

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        toks = self.tokens(inputs)
        real = {m: padding_mask(inputs[m]) for m in toks}  # True = real token
        pooled, weights = [], []
        for m, (q, q_pad) in toks.items():
            others = [k for k in toks if k != m]
            x = q
            if others:
                kv = torch.cat([toks[k][0] for k in others], 1)
                kv_real = torch.cat([real[k] for k in others], 1)
                has_kv = kv_real.any(1)
                kv_pad = ~kv_real
                kv_pad[:, 0] &= has_kv  # keep one key where none is real, so softmax stays finite
                has_kv = has_kv.to(q.dtype).view(-1, 1, 1)
                attended, _ = self.attn[m](self.norm_q[m](q), kv, kv, key_padding_mask=kv_pad, need_weights=False)
                x = q + attended * has_kv  # no real partner token in this example: identity
            x = x + self.ffn[m](x)
            keep = (~q_pad).unsqueeze(-1).to(x.dtype)
            pooled.append((x * keep).sum(1) / keep.sum(1).clamp_min(1.0))
            weights.append(presence(inputs[m]).to(x.dtype))
        return self.head(presence_weighted_mean(pooled, weights))


@dataclass(frozen=True)
class BottleneckParams(SharedParams):
    bottlenecks: int = field(default=4, metadata=space.choice([2, 4, 8]))
    layers: int = field(default=1, metadata=space.int_range(1, 2))


@register_strategy(
    "mbt",
    family="mid",
    params=BottleneckParams,
    min_modalities=2,
    citation="Nagrani, Yang, Arnab, Jansen, Schmid & Sun (2021), Attention Bottlenecks for Multimodal Fusion, NeurIPS",
)
class AttentionBottleneck(ModalityAloneLogits, TokenProjection):
    """Multimodal Bottleneck Transformer: modalities exchange information only through a few shared
    bottleneck tokens. Per layer, each modality runs a transformer layer over [its tokens;
    bottlenecks]; the new bottlenecks are the average of the modalities' updated copies.

    Missing modality: it does not update the bottlenecks; the output (mean of the bottleneck tokens
    and of each present modality's pooled tokens) uses present modalities only. Per example, a
    modality that is all padding (e.g. zeroed by modality dropout) is treated the same way.
    `unimodal_logits` runs the network on each modality alone.
    """

    def __init__(self, spec: FusionSpec, params: BottleneckParams) -> None:
        super().__init__(spec, params)
        h = params.hidden_dim
        self.bottleneck = nn.Parameter(torch.randn(1, params.bottlenecks, h) * 0.02)
        self.layers = nn.ModuleList(
            nn.ModuleDict(
                {m: nn.TransformerEncoderLayer(h, pick_heads(h), 2 * h, params.dropout, batch_first=True, norm_first=True)
                 for m in spec.dims}
            )
            for _ in range(params.layers)
        )
        self.norm = nn.LayerNorm(h)
        self.head = mlp_head(h, h, spec.num_classes, params.dropout)

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        toks = self.tokens(inputs)
        b = self.batch_size(inputs)
        nb = self.params.bottlenecks
        z = self.bottleneck.expand(b, -1, -1)
        states = {m: t for m, (t, _) in toks.items()}
        real = {m: padding_mask(inputs[m]) for m in toks}  # True = real token
        # the bottleneck tokens are never masked, so a modality that is all padding is just absent
        pads = {m: torch.cat([~r, r.new_zeros(b, nb)], 1) for m, r in real.items()}
        here = {m: r.any(1).to(z.dtype) for m, r in real.items()}
        for layer in self.layers:
            updates = []
            for m in states:
                out = layer[m](torch.cat([states[m], z], 1), src_key_padding_mask=pads[m])
                states[m], zm = out[:, :-nb], out[:, -nb:]
                updates.append(zm.flatten(1))
            z = presence_weighted_mean(updates, list(here.values())).view(b, nb, -1)
        pooled, weights = [z.mean(1)], [torch.ones_like(next(iter(here.values())))]
        for m, x in states.items():
            keep = real[m].unsqueeze(-1).to(x.dtype)
            pooled.append((x * keep).sum(1) / keep.sum(1).clamp_min(1.0))
            weights.append(here[m])
        return self.head(self.norm(presence_weighted_mean(pooled, weights)))


__all__ = ["masked_mean", "padding_mask"]
