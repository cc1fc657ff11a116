"""Building blocks shared by the token strategies (early_transformer, mult, mbt, coattention).

Every token strategy embeds a modality's sequence the same way: a per-modality Linear to
hidden_dim, plus a learned positional embedding (one vector per position of that modality, so
ordered inputs — pixel-row bands, time frames, grid cells — are not a bag of tokens), plus a
learned modality-type embedding (so a joint sequence knows which modality a token came from).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from fusebench.strategies.base import FusionModel, FusionSpec, SharedParams, key_padding, padding_mask, pick_heads


class TokenProjection(FusionModel):
    """Per-modality Linear to hidden_dim + learned positional embedding + modality-type embedding.

    Positions beyond the spec's `tokens[m]` are rejected (the positional table has one row per
    position the strategy was built for)."""

    input_kind = "tokens"
    zeroed_is_absent = True  # an all-padding sequence is masked out, as if absent

    def __init__(self, spec: FusionSpec, params: SharedParams) -> None:
        super().__init__(spec, params)
        h = params.hidden_dim
        self.proj = nn.ModuleDict({m: nn.Linear(d, h) for m, d in spec.dims.items()})
        self.modality_emb = nn.ParameterDict({m: nn.Parameter(torch.randn(h) * 0.02) for m in spec.dims})
        self.pos_emb = nn.ParameterDict(
            {m: nn.Parameter(torch.randn(max(int(t), 1), h) * 0.02) for m, t in spec.tokens.items()}
        )

    def embed(self, m: str, x: Tensor) -> Tensor:
        """`[B, T, D]` → `[B, T, H]`: projection + position + modality type."""
        pos = self.pos_emb[m]
        if x.shape[1] > pos.shape[0]:
            raise ValueError(
                f"{type(self).__name__}: modality {m!r} has {x.shape[1]} tokens, built for at most {pos.shape[0]}"
            )
        return self.proj[m](x) + pos[: x.shape[1]] + self.modality_emb[m]

    def tokens(self, inputs: Mapping[str, Tensor]) -> dict[str, tuple[Tensor, Tensor]]:
        """modality → (embedded tokens [B, T, H], key padding mask [B, T] True = pad)."""
        return {m: (self.embed(m, inputs[m]), key_padding(inputs[m])) for m in self.present(inputs)}


def last_real(x: Tensor, real: Tensor) -> Tensor:
    """`[B, T, H]`, bool `[B, T]` (True = real) → the last real token of each row `[B, H]`
    (position 0 where a row has none)."""
    t = torch.arange(real.shape[1], device=real.device)
    idx = (real.long() * t).amax(1)
    return x[torch.arange(x.shape[0], device=x.device), idx]


def pooled_real(x: Tensor, real: Tensor) -> Tensor:
    """Mean of `[B, T, H]` over the real positions of bool `[B, T]` (zero where none)."""
    keep = real.unsqueeze(-1).to(x.dtype)
    return (x * keep).sum(1) / keep.sum(1).clamp_min(1.0)


def partner_keys(real: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Key padding for a concatenation of partner sequences: (mask True = pad, has_any [B]).
    A row with no real partner keeps one key unmasked so the softmax stays finite; callers zero
    the attention output of such rows with `has_any`."""
    kv_real = torch.cat(real, 1)
    has = kv_real.any(1)
    pad = ~kv_real
    pad[:, 0] &= has
    return pad, has


class CrossAttentionLayer(nn.Module):
    """One pre-LN crossmodal transformer layer (MulT's CM block, ViLBERT's co-attention half):
    x ← x + Attn(LN(x), LN(y), LN(y)); x ← x + FFN(LN(x)). As in the MulT reference, the same
    LayerNorm normalises the queries and the keys/values. Rows with no real key (`has_kv` = 0)
    get no attention update (the layer is then its feed-forward half only)."""

    def __init__(self, h: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(h)
        self.attn = nn.MultiheadAttention(h, pick_heads(h), dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(nn.LayerNorm(h), nn.Linear(h, 2 * h), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * h, h))

    def forward(self, x: Tensor, y: Tensor, y_pad: Tensor, has_kv: Tensor) -> Tensor:
        kv = self.norm(y)
        attended, _ = self.attn(self.norm(x), kv, kv, key_padding_mask=y_pad, need_weights=False)
        x = x + attended * has_kv.to(x.dtype).view(-1, 1, 1)
        return x + self.ffn(x)


def encoder_layer(h: int, dropout: float) -> nn.TransformerEncoderLayer:
    """The pre-LN self-attention layer every token strategy uses (FFN width 2h)."""
    return nn.TransformerEncoderLayer(h, pick_heads(h), 2 * h, dropout, batch_first=True, norm_first=True)


__all__ = ["CrossAttentionLayer", "TokenProjection", "encoder_layer", "last_real", "padding_mask", "partner_keys",
           "pooled_real"]
