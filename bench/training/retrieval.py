"""The retrieval dual encoder: learned projections over frozen image and text features.

Two linear maps project the cached, standardised pooled features (EfficientNet-Lite0 image,
MiniLM text) into one L2-normalised space; cosine similarity ranks. Training is the symmetric
InfoNCE loss of CLIP (Radford et al. 2021) with a fixed temperature that the search tunes. A batch
holds distinct images with one of their captions each (drawn anew every epoch), so in-batch
negatives are never captions of the query's own image. Early stopping keeps the epoch with the best
validation rsum (blocked ranking over the whole validation split).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fusebench.core import space
from fusebench.core.retrieval_math import RetrievalScores, blocked_ranks, scores_from_ranks
from fusebench.features.extract import SplitData
from fusebench.training.loop import TrainConfig

IMAGE, TEXT = "image", "text"


@dataclass(frozen=True)
class DualEncoderParams:
    """The dual encoder's search space (same lr / weight decay ranges as every strategy)."""

    lr: float = field(default=1e-3, metadata=space.log_float(1e-4, 1e-2))
    weight_decay: float = field(default=1e-4, metadata=space.log_float(1e-6, 1e-2))
    embed_dim: int = field(default=256, metadata=space.choice([128, 256, 512]))
    temperature: float = field(default=0.05, metadata=space.log_float(0.01, 0.2))

    def __post_init__(self) -> None:
        space.validate_params(self)


@dataclass(frozen=True)
class RetrievalSplit:
    """One split seen as a retrieval problem.

    Args:
        data: the split's tensors; row r is the pair (image of group[r], caption r).
        image_rows: for each unique image (gallery order), the first row that carries it.
        caption_group: for each caption (row), the index of its image in gallery order.
        cluster: for each image in gallery order, its cluster id (the Flickr8k image file name).
    """

    data: SplitData
    image_rows: Tensor
    caption_group: Tensor
    cluster: tuple[str, ...]

    @classmethod
    def from_split(cls, data: SplitData, groups: np.ndarray, image_ids: list[str]) -> RetrievalSplit:
        _, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
        return cls(data, torch.as_tensor(first), torch.as_tensor(inverse.reshape(-1)),
                   tuple(image_ids[i] for i in first))

    @property
    def n_images(self) -> int:
        return int(self.image_rows.shape[0])

    @property
    def n_captions(self) -> int:
        return int(self.caption_group.shape[0])

    def pooled(self) -> tuple[Tensor, Tensor]:
        """(images `[I, Di]`, captions `[C, Dt]`) pooled features."""
        return self.data.pooled[IMAGE][self.image_rows], self.data.pooled[TEXT]


class DualEncoder(nn.Module):
    """Image and text projections into one normalised embedding space."""

    def __init__(self, image_dim: int, text_dim: int, params: DualEncoderParams) -> None:
        super().__init__()
        self.params = params
        self.image = nn.Linear(image_dim, params.embed_dim)
        self.text = nn.Linear(text_dim, params.embed_dim)

    def embed_images(self, x: Tensor) -> Tensor:
        return F.normalize(self.image(x), dim=-1)

    def embed_texts(self, x: Tensor) -> Tensor:
        return F.normalize(self.text(x), dim=-1)

    def loss(self, images: Tensor, texts: Tensor) -> Tensor:
        """Symmetric InfoNCE over a batch of matching (image, caption) rows."""
        logits = self.embed_images(images) @ self.embed_texts(texts).T / self.params.temperature
        target = torch.arange(logits.shape[0], device=logits.device)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


@dataclass(frozen=True)
class Ranked:
    """Per-query ranks of one split: image→text `[I]` and text→image `[C]`."""

    i2t: np.ndarray
    t2i: np.ndarray

    @property
    def scores(self) -> RetrievalScores:
        return scores_from_ranks(self.i2t, self.t2i)


@torch.inference_mode()
def embed(model: DualEncoder, split: RetrievalSplit) -> tuple[Tensor, Tensor]:
    """Normalised embeddings (images `[I, E]`, captions `[C, E]`) in eval mode."""
    model.eval()
    images, texts = split.pooled()
    return model.embed_images(images), model.embed_texts(texts)


def rank_split(model: DualEncoder, split: RetrievalSplit, block: int = 1024) -> Ranked:
    """Blocked ranks of every query of the split in both directions."""
    img, txt = embed(model, split)
    gallery = torch.arange(split.n_images, device=img.device)
    group = split.caption_group.to(img.device)
    return Ranked(blocked_ranks(img, txt, gallery, group, block).cpu().numpy(),
                  blocked_ranks(txt, img, group, gallery, block).cpu().numpy())


@dataclass
class DualResult:
    model: DualEncoder
    val_rsum: float
    best_epoch: int
    train_seconds: float
    train_samples: int

    @property
    def train_samples_per_s(self) -> float:
        return self.train_samples / self.train_seconds if self.train_seconds > 0 else float("nan")


def train_dual_encoder(
    train: RetrievalSplit,
    val: RetrievalSplit,
    params: DualEncoderParams,
    cfg: TrainConfig,
    seed: int,
    on_epoch: Callable[[int, float], None] | None = None,
) -> DualResult:
    """Train a dual encoder with AdamW; keep the epoch with the best validation rsum."""
    torch.manual_seed(seed)
    images, texts = train.pooled()
    device = images.device
    model = DualEncoder(images.shape[1], texts.shape[1], params).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    # captions of each image, as a [I, 5]-like ragged table: pick one per image per epoch
    order = torch.argsort(train.caption_group, stable=True)
    counts = torch.bincount(train.caption_group, minlength=train.n_images)
    starts = torch.cumsum(counts, 0) - counts
    best, best_epoch, best_state, bad, seconds, samples = -float("inf"), -1, None, 0, 0.0, 0
    for epoch in range(cfg.epochs):
        model.train()
        t0 = time.perf_counter()
        pick = order[starts + (torch.rand(train.n_images, generator=gen) * counts).long()]
        perm = torch.randperm(train.n_images, generator=gen)
        for b0 in range(0, train.n_images, cfg.batch_size):
            idx = perm[b0 : b0 + cfg.batch_size]
            if idx.numel() < 2:
                continue
            loss = model.loss(images[idx.to(device)], texts[pick[idx].to(device)])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            samples += idx.numel()
        seconds += time.perf_counter() - t0
        score = rank_split(model, val).scores.rsum
        if on_epoch is not None:
            on_epoch(epoch, score)
        if score > best:
            best, best_epoch, bad, best_state = score, epoch, 0, copy.deepcopy(model.state_dict())
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    return DualResult(model, float(best), best_epoch, seconds, samples)
