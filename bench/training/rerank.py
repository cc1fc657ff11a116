"""Fusion strategies as re-rankers: trained on matching pairs, scoring a dual encoder's top-k.

Training pairs are built as in `flickr8k-itm`: every image gives one true pair (a seeded choice
among its captions) and one mismatched pair (a caption of another image of the same split), so
classes are balanced and any registered pair-scoring strategy trains unchanged (two classes,
inputs keyed by modality). With hard negatives (`hard_matching_pairs`, suite setting
`rerank_negatives: hard`) each image's mismatched pair is mined from the dual encoder's top-k instead,
in either direction (a caption of another image among the image's top-k captions, or another image
among its positive caption's top-k images) — the candidates the re-ranker will have to tell apart
at test time, in both retrieval directions. At test time a strategy's score of a pair is its logit margin
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


def _pick(cand: np.ndarray, ok: np.ndarray, fallback: int, rng: np.random.Generator) -> int:
    pool = cand[ok]
    return int(pool[rng.integers(len(pool))]) if len(pool) else fallback


@torch.inference_mode()
def hard_negatives(dual: DualEncoder, split: RetrievalSplit, positives: np.ndarray, k: int, seed: int,
                   block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """One mismatched pair per image i, `(images [n], captions [n])`, mined from the dual encoder's
    top `k` in either direction (a seeded coin per image): image→text, (i, a caption of another image
    among i's top-k captions); text→image, (another image among the top-k images of i's positive
    caption `positives[i]`, that caption). Where the top `k` holds nothing wrong, a random other
    image's caption (or image) is used."""
    rng = np.random.default_rng(seed)
    n = split.n_images
    img, txt = embed(dual, split)
    group_t = split.caption_group.to(img.device)
    own = torch.arange(n, device=img.device)
    _, cap_cand = blocked_topk(img, txt, min(k, split.n_captions), block)  # [n, k] captions per image
    _, img_cand = blocked_topk(txt[torch.as_tensor(positives, device=img.device)], img, min(k, n), block)
    cap_ok = (group_t[cap_cand] != own[:, None]).cpu().numpy()
    img_ok = (img_cand != own[:, None]).cpu().numpy()
    cap_cand, img_cand = cap_cand.cpu().numpy(), img_cand.cpu().numpy()
    by_image = _captions_by_image(split.caption_group.numpy(), n)
    images, captions = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    for i in range(n):
        other = int((i + rng.integers(1, n)) % n)
        if rng.random() < 0.5:  # image→text negative
            images[i] = i
            captions[i] = _pick(cap_cand[i], cap_ok[i], int(by_image[other][rng.integers(len(by_image[other]))]), rng)
        else:  # text→image negative
            images[i] = _pick(img_cand[i], img_ok[i], other, rng)
            captions[i] = positives[i]
    return images, captions


def hard_matching_pairs(split: RetrievalSplit, kind: str, seed: int, dual: DualEncoder, k: int) -> Batch:
    """ITM pairs whose mismatched pairs are hard negatives of the dual encoder (`hard_negatives`)."""
    rng = np.random.default_rng(seed)
    by_image = _captions_by_image(split.caption_group.numpy(), split.n_images)
    pos = np.array([c[rng.integers(len(c))] for c in by_image])
    neg_images, neg = hard_negatives(dual, split, pos, k, seed + 1)
    return _pairs(split, kind, pos, neg, neg_images)


def _pairs(split: RetrievalSplit, kind: str, pos: np.ndarray, neg: np.ndarray,
           neg_images: np.ndarray | None = None) -> Batch:
    """n true pairs (image i, pos[i]) then n mismatched ones (neg_images[i] or i, neg[i])."""
    n = split.n_images
    image_idx = torch.as_tensor(np.concatenate([np.arange(n), np.arange(n) if neg_images is None else neg_images]))
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
