"""Trainable encoder towers: raw preprocessed inputs → the same pooled/token tensors as the cache.

A tower wraps a pretrained encoder module (a Hugging Face text model, EfficientNet-Lite0) and
returns exactly what the frozen path hands a strategy (bench/features/encoders.py, then
bench/features/extract.py `_standardise`): pooled `[B, D]` and tokens `[B, T, D]` with all-zero
padding rows, z-scored with statistics fixed once from the pretrained encoder on train rows
(buffers, saved with the state). Gradients flow through the unfrozen part only.

`apply_mode(mode)`: `frozen` nothing trains; `last:N` the last N blocks (transformer layers,
EfficientNet MBConv blocks) plus the final norm/head layers; `full` everything. Frozen submodules
stay in eval mode whatever `train()` says, so their BatchNorm statistics and dropout never change;
BatchNorm layers stay in eval mode in the unfrozen part too (pretrained statistics, affine weights
trained), so that the features a head learns on in training are the ones it sees in evaluation.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from fusebench.core.encmode import EncoderMode


def _floored(std: Tensor) -> Tensor:
    """Per-dimension std, floored at 1% of the median: a dimension (near) constant on the pretrained
    encoder (MiniLM's pooled vector has one with std 0 on Flickr8k) would otherwise be divided by
    1e-6, and once the encoder trains, its drift reaches the head amplified a million times. At
    initialisation the floor changes nothing (such a dimension is its mean, so z = 0 either way)."""
    return std.clamp_min(max(1e-6, 0.01 * float(std.median())))


def _pad_rows(seqs: Tensor, mask: Tensor, n_tokens: int) -> Tensor:
    """First n_tokens positions, padding rows zeroed, zero-padded up to n_tokens (as the cache stores them)."""
    seqs = seqs[:, :n_tokens] * mask[:, :n_tokens, None].to(seqs.dtype)
    if seqs.shape[1] < n_tokens:
        seqs = F.pad(seqs, (0, 0, 0, n_tokens - seqs.shape[1]))
    return seqs


class Tower(nn.Module):
    """Base: subclasses implement `raw(x) -> (pooled, tokens)`, `blocks()` and `top()`."""

    def __init__(self, encoder: nn.Module, dim: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.checkpointing = False
        self._trainable: list[nn.Module] = []
        for name in ("pooled_mean", "tok_mean"):
            self.register_buffer(name, torch.zeros(dim))
        for name in ("pooled_std", "tok_std"):
            self.register_buffer(name, torch.ones(dim))
        self.mode = EncoderMode()
        self.apply_mode(self.mode)

    def raw(self, x: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def blocks(self) -> list[nn.Module]:  # pragma: no cover - abstract
        raise NotImplementedError

    def frozen_prefix(self) -> int:
        """Leading blocks that never train in this mode, whose output may be cached (0: none)."""
        return 0

    def top(self) -> list[nn.Module]:
        """Layers after the last block (final norms, head conv): unfrozen with any `last:N`."""
        return []

    def apply_mode(self, mode: EncoderMode) -> Tower:
        """Set `requires_grad` per the mode and remember which submodules train."""
        self.mode = mode
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        if mode.kind == "full":
            chosen = [self.encoder]
        elif mode.kind == "last":
            blocks = self.blocks()
            if mode.n > len(blocks):
                raise ValueError(f"encoder mode {mode}: this encoder has only {len(blocks)} blocks")
            chosen = [*blocks[len(blocks) - mode.n:], *self.top()]
        else:
            chosen = []
        for m in chosen:
            for p in m.parameters():
                p.requires_grad_(True)
        self._trainable = chosen
        self.train(self.training)
        return self

    def train(self, mode: bool = True) -> Tower:
        """Only the unfrozen submodules follow `mode`; the frozen encoder stays in eval mode."""
        super().train(mode)
        self.encoder.eval()
        for m in self._trainable:
            m.train(mode)
        for m in self.encoder.modules():  # BatchNorm keeps the pretrained statistics (its affine weights train):
            if isinstance(m, nn.modules.batchnorm._BatchNorm):  # batch statistics of small batches made
                m.eval()  # train-time features differ from eval-time ones (chance-level AUROC on finetune-smoke)
        return self

    def run_block(self, block: nn.Module, fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
        """`fn(x)` (the forward of `block`), checkpointed when asked for and the block trains: its
        activations are recomputed in backward instead of kept."""
        if self.checkpointing and self.training and torch.is_grad_enabled() and any(
                p.requires_grad for p in block.parameters()):
            return checkpoint(fn, x, use_reentrant=False)
        return fn(x)

    @torch.no_grad()
    def fit_standardisation(self, x: Tensor, batch_size: int = 64) -> None:
        """Train-set statistics of the pretrained encoder's outputs, as the frozen path computes them
        (pooled per dimension; tokens over real rows only)."""
        was = self.training
        self.eval()
        pooled, tokens = [], []
        for i in range(0, x.shape[0], batch_size):
            p, t = self.raw(x[i:i + batch_size])
            pooled.append(p.float())
            tokens.append(t.float())
        self.train(was)
        p, t = torch.cat(pooled), torch.cat(tokens)
        self.pooled_mean.copy_(p.mean(0))
        self.pooled_std.copy_(_floored(p.std(0)))
        real = t[t.abs().amax(-1) > 0]
        if len(real) > 1:
            self.tok_mean.copy_(real.mean(0))
            self.tok_std.copy_(_floored(real.std(0)))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pooled, tokens = self.raw(x)
        pooled = (pooled.float() - self.pooled_mean) / self.pooled_std
        t = tokens.float()
        mask = (t.abs().amax(-1, keepdim=True) > 0).to(t.dtype)
        z = (t - self.tok_mean) / self.tok_std
        z = torch.where(z == 0, torch.full_like(z, 1e-6), z)  # a real row must never read as padding
        return pooled, z * mask


def _layers(model: nn.Module) -> nn.ModuleList:
    """The transformer layer stack of a Hugging Face encoder (BERT/MiniLM, DistilBERT, RoBERTa, ...)."""
    for path in ("encoder.layer", "transformer.layer", "encoder.layers", "layers", "layer"):
        obj: object = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, nn.ModuleList):
            return obj
    raise ValueError(f"{type(model).__name__}: no transformer layer stack found for last:N fine-tuning")


class TextTower(Tower):
    """A Hugging Face text encoder over packed `[B, 2, L]` int64 (token ids, attention mask):
    mean-pooled, L2-normalised sentence vector + the first `tokens` token states."""

    def __init__(self, model: nn.Module, tokens: int) -> None:
        self.n_tokens = tokens
        self.start = 0  # > 0: inputs are cached states entering layer `start` (`prefix`), not token ids
        super().__init__(model, int(model.config.hidden_size))

    def blocks(self) -> list[nn.Module]:
        return list(_layers(self.encoder))

    def top(self) -> list[nn.Module]:
        names = ("norm", "final_layer_norm", "ln_f", "layer_norm")
        return [m for n in names if isinstance(m := getattr(self.encoder, n, None), nn.Module)]

    def apply_mode(self, mode: EncoderMode) -> Tower:
        enable = getattr(self.encoder, "gradient_checkpointing_enable", None)
        if self.checkpointing and enable is not None:
            enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return super().apply_mode(mode)

    def frozen_prefix(self) -> int:
        """How many leading layers never train in this mode: their output can be cached."""
        return len(self.blocks()) - self.mode.n if self.mode.kind == "last" and not self.top() else 0

    @torch.no_grad()
    def prefix(self, x: Tensor, upto: int) -> Tensor:
        """`[N, L, D + 1]`: the hidden states entering layer `upto` (eval mode), the attention mask in the
        last channel — deterministic, so a `last:N` run may compute them once per split."""
        was = self.training
        self.eval()
        ids, mask = x[:, 0], x[:, 1]
        hidden = self.encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[upto]
        self.train(was)
        return torch.cat([hidden.float(), mask[..., None].float()], -1)

    def _suffix(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Layers `start..` over cached prefix states (see `prefix`)."""
        mask = x[..., -1].long()
        length = max(int(mask.sum(1).max()), 1)
        h, mask = x[:, :length, :-1], mask[:, :length]
        if getattr(self.encoder.config, "_attn_implementation", "sdpa") == "sdpa":
            att: Tensor = mask[:, None, None, :].bool()
        else:  # eager attention adds the mask to the scores
            att = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        for layer in self.blocks()[self.start:]:
            out = layer(h, att)
            h = out[0] if isinstance(out, tuple) else out
        return h.float(), mask

    def raw(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.start:
            hidden, mask = self._suffix(x)
        else:
            ids, mask = x[:, 0], x[:, 1]
            length = max(int(mask.sum(1).max()), 1)  # batches pad only to their longest row
            ids, mask = ids[:, :length], mask[:, :length]
            hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        mean = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)
        return F.normalize(mean, dim=-1), _pad_rows(hidden, mask, self.n_tokens)


def _mbconv(block: nn.Module, rate: float | None, x: Tensor) -> Tensor:
    return block(x, drop_connect_rate=rate)


class ImageTower(Tower):
    """EfficientNet-Lite0 over `[B, 3, H, W]` uint8 pixels, normalised as the Lite models expect
    ((x - 127) / 128): global-average pooled features + a `grid × grid` of region tokens."""

    def __init__(self, model: nn.Module, grid: int) -> None:
        self.grid = grid
        self.start = 0  # > 0: inputs are the (cached) activations entering block `start`, not pixels
        super().__init__(model, int(model._conv_head.out_channels))

    def frozen_prefix(self) -> int:
        """How many leading blocks (after the stem) never train in this mode: their output can be cached."""
        if self.mode.kind != "last":
            return 0
        return len(self.blocks()) - self.mode.n

    @torch.no_grad()
    def prefix(self, pixels: Tensor, upto: int) -> Tensor:
        """The activations entering block `upto` (stem + blocks before it, eval mode): deterministic, so
        a `last:N` run may compute them once per split (`FineTuneSettings.cache_prefix`)."""
        m = self.encoder
        was = self.training
        self.eval()
        h = m._swish(m._bn0(m._conv_stem((pixels.float() - 127.0) / 128.0)))
        for i, block in enumerate(self.blocks()[:upto]):
            h = block(h, drop_connect_rate=self._rate(i))
        self.train(was)
        return h

    def _rate(self, i: int) -> float | None:
        rate = self.encoder._global_params.drop_connect_rate
        return rate * float(i) / len(self.blocks()) if rate else None

    def blocks(self) -> list[nn.Module]:
        return list(self.encoder._blocks)

    def top(self) -> list[nn.Module]:
        return [self.encoder._conv_head, self.encoder._bn1]

    def raw(self, x: Tensor) -> tuple[Tensor, Tensor]:
        m = self.encoder
        h = x if self.start else m._swish(m._bn0(m._conv_stem((x.float() - 127.0) / 128.0)))
        for i, block in enumerate(self.blocks()):
            if i < self.start:
                continue
            h = self.run_block(block, functools.partial(_mbconv, block, self._rate(i)), h)
        fmap = m._swish(m._bn1(m._conv_head(h))).float()
        tokens = F.adaptive_avg_pool2d(fmap, self.grid).flatten(2).transpose(1, 2)
        return fmap.mean((2, 3)), tokens
