"""Statistics of retrieval cells from their per-query ranks (the retrieval task's per-example predictions).

Predictions file: `RUN_DIR/predictions/<dataset>/<strategy>.parquet` with one row per seed ×
query: `seed`, `direction` ("i2t" | "t2i"), `query` (index), `rank` (1-based rank of the first
correct key), `cluster` (the query's image: an image query is its own cluster, a caption query
belongs to its image's cluster).

Runs with R search replicates add a `replicate` column (files without one read as replicate 0).
Intervals come from a hierarchical bootstrap, search replicates → evaluation seeds → image clusters
(one draw resamples the replicates, the seeds within each drawn replicate, and the images; a drawn
image brings its own image→text query and all its caption→image queries). The paired test
against the dual encoder alone uses the same draws for both cells: p = 2 × min(P(Δ ≤ 0),
P(Δ ≥ 0)) over draws, capped at 1. A re-ranker *beats the dual encoder* when its mean rsum is higher and p < ALPHA.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fusebench.core.retrieval_math import RECALL_KS
from fusebench.results.records import Record
from fusebench.results.resample import prediction_path

log = logging.getLogger(__name__)

N_BOOT = 1000
ALPHA = 0.05
BASE = "dual_encoder"


def _units(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with a `replicate` column (0 when the file predates search replicates)."""
    return frame if "replicate" in frame.columns else frame.assign(replicate=0)


def _hits(frame: pd.DataFrame, direction: str) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """(sum of R@k indicators `[U, Q]` over k in RECALL_KS, the query's cluster codes `[Q]`, units), a unit
    being a (replicate, seed) pair."""
    part = _units(frame)
    part = part[part.direction == direction].sort_values(["replicate", "seed", "query"])
    units = sorted({(int(r), int(s)) for r, s in zip(part.replicate, part.seed)})
    ranks = part["rank"].to_numpy().reshape(len(units), -1)
    hits = sum((ranks <= k).astype(np.float32) for k in RECALL_KS) * 100.0
    first = (part.replicate == units[0][0]) & (part.seed == units[0][1])
    clusters = part[first]["cluster"].to_numpy()
    return hits, clusters, units


def _pick_units(units: list[tuple[int, int]], n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """`[n_boot, U]` unit indices: replicates drawn with replacement, then seeds within each drawn one."""
    reps = sorted({r for r, _ in units})
    members = [np.array([i for i, (r, _) in enumerate(units) if r == rep]) for rep in reps]
    k = min(len(m) for m in members)
    if len(reps) < 2 or any(len(m) != k for m in members):  # one replicate (or unequal seeds): units flat
        return rng.integers(0, len(units), size=(n_boot, len(units)))
    table = np.stack(members)  # [R, K]
    picked_r = rng.integers(0, len(reps), size=(n_boot, len(reps)))  # [B, R]
    picked_k = rng.integers(0, k, size=(n_boot, len(reps), k))  # [B, R, K]
    return table[picked_r[:, :, None], picked_k].reshape(n_boot, -1)


def draws(frame: pd.DataFrame, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """rsum of each bootstrap draw `[n_boot]` (replicates, seeds within them, then image clusters, resampled)."""
    h_i, c_i, units = _hits(frame, "i2t")
    h_t, c_t, _ = _hits(frame, "t2i")
    codes, inv_i = np.unique(c_i, return_inverse=True)
    inv_t = np.searchsorted(codes, c_t)
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(len(codes), np.full(len(codes), 1 / len(codes)), size=n_boot).astype(np.float32)
    w_i, w_t = weights[:, inv_i], weights[:, inv_t]  # [B, Q]
    per_unit = (h_i @ w_i.T) / w_i.sum(1) + (h_t @ w_t.T) / w_t.sum(1)  # [U, B]
    pick = _pick_units(units, n_boot, rng)
    return per_unit[pick, np.arange(n_boot)[:, None]].mean(1)


def retrieval_stats(records: list[Record], run_dir: Path, dataset: str) -> dict[str, dict[str, Any]]:
    """strategy → stats (mean, std, ci95, delta and p against the dual encoder, beats_dual_encoder)."""
    ok: dict[str, list[Record]] = {}
    for r in records:
        if r.dataset == dataset and r.status == "ok":
            ok.setdefault(r.strategy, []).append(r)
    boot: dict[str, np.ndarray] = {}
    for s in ok:
        path = prediction_path(run_dir, dataset, s)
        try:
            boot[s] = draws(pd.read_parquet(path))
        except Exception as exc:
            log.warning("%s: unreadable retrieval predictions (%s); no interval for %s", path, exc, s)
    out: dict[str, dict[str, Any]] = {}
    for s, rs in ok.items():
        values = np.array([r.main_metric for r in rs], dtype=float)
        mean = float(values.mean())
        st: dict[str, Any] = {"mean": mean, "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                              "n_seeds": len({r.seed for r in rs}), "n_replicates": len({r.replicate for r in rs}),
                              "n_units": len(values), "baseline": BASE}
        if s in boot:
            st["ci95_low"], st["ci95_high"] = (float(x) for x in np.percentile(boot[s], [2.5, 97.5]))
        if s != BASE and BASE in ok:
            base_mean = float(np.mean([r.main_metric for r in ok[BASE]]))
            st["delta_vs_dual_encoder"] = mean - base_mean
            p = None
            if s in boot and BASE in boot:
                d = boot[s] - boot[BASE]
                p = float(min(1.0, 2 * min((d <= 0).mean(), (d >= 0).mean())))
            st["p_vs_dual_encoder"] = p
            st["beats_dual_encoder"] = bool(p is not None and mean > base_mean and p < ALPHA)
        out[s] = st
    return out


def attach_retrieval_stats(records: list[Record], run_dir: Path, dataset: str) -> list[Record]:
    """All records, with the `stats` of `dataset`'s ok records (re)computed from their ranks."""
    import dataclasses

    stats = retrieval_stats(records, run_dir, dataset)
    return [dataclasses.replace(r, stats=stats[r.strategy]) if r.dataset == dataset and r.strategy in stats
            and r.status == "ok" else r for r in records]
