"""Fusion strategies as re-rankers: trained on matching pairs, scoring a dual encoder's top-k.

Training pairs are built as in `flickr8k-itm`: every image gives one true pair (a seeded choice
among its captions) and one mismatched pair (a caption of another image of the same split), so
classes are balanced and any registered pair-scoring strategy trains unchanged (two classes,
inputs keyed by modality). With hard negatives (`hard_matching_pairs`, suite setting
`rerank_negatives: hard`) the mismatched caption of each image is drawn instead from the captions
of *other* images among the dual encoder's top-k for it — the candidates the re-ranker will have to
tell apart at test time. At test time a strategy's score of a pair is its logit margin
`logit[1] - logit[0]`; candidate pairs are scored in chunks, so memory stays bounded.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from fusebench.core.retrieval_math import blocked_topk, rerank_ranks
from fusebench.strategies.base import FusionModel
from fusebench.training.loop import Batch
from fusebench.training.retrieval import IMAGE, TEXT, DualEncoder, Ranked, RetrievalSplit, embed

PAIR_CHUNK = 2048


def _inputs(split: RetrievalSplit, kind: str, image_idx: Tensor, caption_idx: Tensor) -> dict[str, Tensor]:
    source = split.data.pooled if kind == "pooled" else split.data.tokens
    rows = split.image_rows.to(image_idx.device)[image_idx]
    return {IMAGE: source[IMAGE][rows], TEXT: source[TEXT][caption_idx]}


def matching_pairs(split: RetrievalSplit, kind: str, seed: int) -> Batch:
    """ITM pairs of a split (labels 1 for true, 0 for mismatched), `2 × n_images` rows."""
    rng = np.random.default_rng(seed)
    n = split.n_images
    group = split.caption_group.numpy()
    by_image = _captions_by_image(group, n)
    pos = np.array([c[rng.integers(len(c))] for c in by_image])
    other = (np.arange(n) + rng.integers(1, n, size=n)) % n  # never the same image
    neg = np.array([by_image[o][rng.integers(len(by_image[o]))] for o in other])
    return _pairs(split, kind, pos, neg)


@torch.inference_mode()
def hard_negatives(dual: DualEncoder, split: RetrievalSplit, k: int, seed: int, block: int = 1024) -> np.ndarray:
    """For each image, one caption of *another* image among the dual encoder's top `k` captions for it
    (seeded choice); an image whose top `k` holds only its own captions gets a random other image's one."""
    rng = np.random.default_rng(seed)
    img, txt = embed(dual, split)
    _, cand = blocked_topk(img, txt, min(k, split.n_captions), block)
    group = split.caption_group.to(cand.device)
    wrong = (group[cand] != torch.arange(split.n_images, device=cand.device)[:, None]).cpu().numpy()
    cand = cand.cpu().numpy()
    n, out = split.n_images, np.empty(split.n_images, dtype=np.int64)
    by_image = _captions_by_image(split.caption_group.numpy(), n)
    for i in range(n):
        pool = cand[i][wrong[i]]
        if len(pool):
            out[i] = pool[rng.integers(len(pool))]
        else:
            o = (i + rng.integers(1, n)) % n
            out[i] = by_image[o][rng.integers(len(by_image[o]))]
    return out


def hard_matching_pairs(split: RetrievalSplit, kind: str, seed: int, dual: DualEncoder, k: int) -> Batch:
    """ITM pairs whose mismatched caption is a hard negative of the dual encoder (`hard_negatives`)."""
    rng = np.random.default_rng(seed)
    by_image = _captions_by_image(split.caption_group.numpy(), split.n_images)
    pos = np.array([c[rng.integers(len(c))] for c in by_image])
    return _pairs(split, kind, pos, hard_negatives(dual, split, k, seed + 1))


def _pairs(split: RetrievalSplit, kind: str, pos: np.ndarray, neg: np.ndarray) -> Batch:
    n = split.n_images
    image_idx = torch.as_tensor(np.concatenate([np.arange(n), np.arange(n)]))
    caption_idx = torch.as_tensor(np.concatenate([pos, neg]))
    device = split.data.labels.device
    inputs = _inputs(split, kind, image_idx.to(device), caption_idx.to(device))
    labels = torch.as_tensor(np.r_[np.ones(n), np.zeros(n)], dtype=torch.long, device=device)
    return Batch(inputs, labels)


def _captions_by_image(group: np.ndarray, n: int) -> list[np.ndarray]:
    order = np.argsort(group, kind="stable")
    bounds = np.searchsorted(group[order], np.arange(n + 1))
    return [order[bounds[i] : bounds[i + 1]] for i in range(n)]


@torch.inference_mode()
def pair_scores(model: FusionModel, split: RetrievalSplit, image_idx: Tensor, caption_idx: Tensor,
                chunk: int = PAIR_CHUNK) -> Tensor:
    """Match score (logit margin) of each (image, caption) pair, evaluated `chunk` pairs at a time."""
    model.eval()
    out = []
    for s in range(0, image_idx.shape[0], chunk):
        logits = model(_inputs(split, model.input_kind, image_idx[s : s + chunk], caption_idx[s : s + chunk])).float()
        out.append(logits[:, 1] - logits[:, 0])
    return torch.cat(out) if out else torch.empty(0)


@torch.inference_mode()
def rerank(dual: DualEncoder, reranker: FusionModel, split: RetrievalSplit, base: Ranked, k: int,
           block: int = 1024) -> Ranked:
    """Ranks after `reranker` re-scores each query's top-`k` dual-encoder candidates, both directions."""
    img, txt = embed(dual, split)
    device = img.device
    group = split.caption_group.to(device)
    # image → text: candidates are captions
    _, cand = blocked_topk(img, txt, k, block)
    q = torch.arange(split.n_images, device=device)[:, None].expand_as(cand)
    new = pair_scores(reranker, split, q.reshape(-1), cand.reshape(-1)).view_as(cand)
    i2t = rerank_ranks(cand, new, group[cand] == q, torch.as_tensor(base.i2t, device=device))
    # text → image: candidates are images
    _, cand = blocked_topk(txt, img, k, block)
    q = torch.arange(split.n_captions, device=device)[:, None].expand_as(cand)
    new = pair_scores(reranker, split, cand.reshape(-1), q.reshape(-1)).view_as(cand)
    t2i = rerank_ranks(cand, new, cand == group[:, None], torch.as_tensor(base.t2i, device=device))
    return Ranked(i2t.cpu().numpy(), t2i.cpu().numpy())
