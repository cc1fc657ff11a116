"""Raw inputs of the trainable views: deterministic preprocessing done once per split.

Text views (`minilm`, `hf:<model>`): the model's tokenizer, padded to `max_length`, packed as one
`[N, 2, L]` int64 tensor (token ids, attention mask) so that a batch stays one tensor per view.
Image views (`efficientnet_lite0`): decoded RGB `[N, 3, H, W]` uint8 (resized when the view says
`size`); the tower normalises on the fly, so the resident tensor is 4× smaller than float pixels.
Other encoders (TF-IDF, log-mel, pixels, Whisper via ctranslate2) cannot be fine-tuned here:
their views come from the feature cache in every mode.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from fusebench.config.loader import ViewConfig
from fusebench.features.encoders import build_encoder

TowerKind = Literal["text", "image"]
_PRETRAINED: dict[tuple[str, str, str], Any] = {}  # (encoder, options, device) → built frozen encoder


def tower_kind(encoder: str) -> TowerKind | None:
    """Which tower fine-tunes an encoder id, or None when it stays frozen."""
    if encoder == "minilm" or encoder.startswith("hf:"):
        return "text"
    if encoder == "efficientnet_lite0":
        return "image"
    return None


def pretrained(view: ViewConfig, device: torch.device) -> Any:
    """The view's encoder (bench.features.encoders), built once per process: its `.model` is the
    template every tower copies, its `.tokenizer` (text) preprocesses."""
    key = (view.encoder, repr(sorted(view.options.items())), str(device))
    if key not in _PRETRAINED:
        _PRETRAINED[key] = build_encoder(view.encoder, view.options, device)
    return _PRETRAINED[key]


def tokenize(tokenizer: Any, values: Sequence[str], max_length: int) -> Tensor:
    """`[N, 2, max_length]` int64: token ids and attention mask, padded/truncated to max_length."""
    enc = tokenizer(list(values), padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    return torch.stack([enc["input_ids"], enc["attention_mask"]], dim=1).long()


def decode_images(values: Sequence[bytes], size: int | None) -> Tensor:
    """`[N, 3, H, W]` uint8 RGB; identical images are decoded once."""
    from PIL import Image

    seen: dict[bytes, Tensor] = {}
    out = []
    for v in values:
        key = hashlib.blake2b(v, digest_size=16).digest()
        if key not in seen:
            img = Image.open(io.BytesIO(v)).convert("RGB")
            if size:
                img = img.resize((size, size), Image.BILINEAR)
            seen[key] = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
        out.append(seen[key])
    return torch.stack(out)


def preprocess(kind: TowerKind, encoder: Any, values: Sequence[Any], max_length: int | None) -> Tensor:
    """One split's raw tensor for a trainable view."""
    if kind == "text":
        return tokenize(encoder.tokenizer, values, max_length or encoder.options.max_length)
    return decode_images(values, getattr(encoder.options, "size", None))
