"""Cross-modal retrieval arithmetic on embeddings, computed in blocks so memory stays bounded.

A retrieval problem is `queries [Q, D]` against `keys [N, D]` scored by dot product; query q's
correct keys are those whose group equals `query_group[q]` (Flickr8k: a caption's group is its
image; an image query has 5 correct captions, a caption query has one correct image). The full
`[Q, N]` score matrix is never materialised: every function walks it in tiles of at most
`block × block` scores, so peak extra memory is O(block² + Q·k) whatever Q and N are.

Rank convention: the 1-based rank of the first correct key, counting keys that score strictly
higher than the best correct key (ties go to the correct key). R@k is the percentage of queries
whose rank is ≤ k; rsum is R@1+R@5+R@10 of both directions (Karpathy & Fei-Fei 2015).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

DEFAULT_BLOCK = 1024
RECALL_KS = (1, 5, 10)


def _tiles(n: int, block: int) -> range:
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    return range(0, n, block)


@torch.inference_mode()
def blocked_topk(queries: Tensor, keys: Tensor, k: int, block: int = DEFAULT_BLOCK) -> tuple[Tensor, Tensor]:
    """Top-`k` keys of every query by dot product: (scores `[Q, k]`, key indices `[Q, k]`), best first.

    Each query block keeps a running top-k that is merged with every key tile, so at most
    `block × (block + k)` scores exist at a time."""
    if queries.shape[-1] != keys.shape[-1]:
        raise ValueError(f"queries have dim {queries.shape[-1]}, keys {keys.shape[-1]}: project both to one space")
    k = min(k, keys.shape[0])
    out_s, out_i = [], []
    for q0 in _tiles(queries.shape[0], block):
        q = queries[q0 : q0 + block]
        best_s = q.new_full((q.shape[0], 0), float("-inf"))
        best_i = torch.empty((q.shape[0], 0), dtype=torch.long, device=q.device)
        for k0 in _tiles(keys.shape[0], block):
            s = q @ keys[k0 : k0 + block].T
            idx = torch.arange(k0, k0 + s.shape[1], device=q.device).expand(q.shape[0], -1)
            cat_s, cat_i = torch.cat([best_s, s], 1), torch.cat([best_i, idx], 1)
            top = cat_s.topk(min(k, cat_s.shape[1]), dim=1)
            best_s, best_i = top.values, cat_i.gather(1, top.indices)
        out_s.append(best_s)
        out_i.append(best_i)
    return torch.cat(out_s), torch.cat(out_i)


@torch.inference_mode()
def blocked_ranks(
    queries: Tensor, keys: Tensor, query_group: Tensor, key_group: Tensor, block: int = DEFAULT_BLOCK
) -> Tensor:
    """1-based rank of the first correct key of every query `[Q]` (see module doc), in two tiled passes:
    the best correct score per query, then the number of keys scoring strictly above it."""
    if query_group.shape[0] != queries.shape[0] or key_group.shape[0] != keys.shape[0]:
        raise ValueError("one group id per query and per key is needed")
    ranks = []
    for q0 in _tiles(queries.shape[0], block):
        q, qg = queries[q0 : q0 + block], query_group[q0 : q0 + block]
        best_pos = q.new_full((q.shape[0],), float("-inf"))
        for k0 in _tiles(keys.shape[0], block):
            s = q @ keys[k0 : k0 + block].T
            pos = qg[:, None] == key_group[None, k0 : k0 + block]
            best_pos = torch.maximum(best_pos, s.masked_fill(~pos, float("-inf")).amax(1))
        if torch.isinf(best_pos).any():
            bad = int(torch.isinf(best_pos).nonzero()[0, 0]) + q0
            raise ValueError(f"query {bad} (group {int(query_group[bad])}) has no correct key among the keys")
        above = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
        for k0 in _tiles(keys.shape[0], block):
            above += (q @ keys[k0 : k0 + block].T > best_pos[:, None]).sum(1)
        ranks.append(above + 1)
    return torch.cat(ranks)


def rerank_ranks(candidates: Tensor, new_scores: Tensor, correct: Tensor, old_ranks: Tensor) -> Tensor:
    """Ranks after re-ordering each query's top-k `candidates` by `new_scores` (both `[Q, k]`).

    `correct[q, j]` says whether candidate j is a correct key. A query with a correct key among its
    candidates gets the re-ordered position of its best-scored correct one (ties go to the correct
    key); a query without one keeps its old rank (> k: re-ranking cannot reach it)."""
    masked = new_scores.masked_fill(~correct, float("-inf"))
    best = masked.amax(1)
    new = (new_scores > best[:, None]).sum(1) + 1
    has = correct.any(1)
    return torch.where(has, new, old_ranks)


@dataclass(frozen=True)
class RetrievalScores:
    """R@1/5/10 (percent) of both directions, median ranks and rsum."""

    i2t: dict[int, float]
    t2i: dict[int, float]
    i2t_medr: float
    t2i_medr: float

    @property
    def rsum(self) -> float:
        return float(sum(self.i2t.values()) + sum(self.t2i.values()))

    def as_metrics(self) -> dict[str, float]:
        out = {f"i2t_r{k}": v for k, v in self.i2t.items()} | {f"t2i_r{k}": v for k, v in self.t2i.items()}
        return out | {"i2t_medr": self.i2t_medr, "t2i_medr": self.t2i_medr, "rsum": self.rsum}


def recalls(ranks: np.ndarray, ks: tuple[int, ...] = RECALL_KS) -> dict[int, float]:
    """R@k in percent for each k (ranks is 1-based)."""
    ranks = np.asarray(ranks)
    return {k: float((ranks <= k).mean() * 100.0) for k in ks}


def scores_from_ranks(i2t_ranks: np.ndarray, t2i_ranks: np.ndarray) -> RetrievalScores:
    return RetrievalScores(recalls(i2t_ranks), recalls(t2i_ranks),
                           float(np.median(i2t_ranks)), float(np.median(t2i_ranks)))


def rsum_from_ranks(i2t_ranks: np.ndarray, t2i_ranks: np.ndarray) -> np.ndarray:
    """rsum along the last axis of rank arrays (vectorised for bootstrap draws `[..., Q]`)."""
    total = 0.0
    for ranks in (i2t_ranks, t2i_ranks):
        for k in RECALL_KS:
            total = total + (np.asarray(ranks) <= k).mean(-1) * 100.0
    return np.asarray(total)
