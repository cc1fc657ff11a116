"""Per-example test predictions of a cell and the test-cluster bootstrap that `results.stats` builds on.

A cell's predictions file (`RUN_DIR/predictions/<dataset>/<strategy>.parquet`) holds one row per
search replicate × evaluation seed × test example, with columns `seed`, `index`, `label`, `prob`
and, when the run wrote them, `replicate` (missing → 0) and `cluster` (missing → the row index).
A *unit* is one (replicate, seed) pair: one trained model scored on the whole test set.

Test examples are not independent: Flickr8k-ITM uses every image twice, AV-MNIST reuses FSDD
recordings, ESC-50 clips share source files. The bootstrap therefore resamples *clusters* with
replacement (every example of a drawn cluster comes along) and turns a draw into example weights
(multiplicities), so one scorer serves every resample: `score(weights[b, N]) -> [b, U]`.
Draws are seeded from (`STATS_SEED`, N, number of clusters), so every cell of a dataset (same test
examples, same clusters) sees the same draws — the pairing the paired test relies on.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fusebench.core import metrics as metric_lib
from fusebench.core.io import atomic_write_bytes

N_RESAMPLES = 1000
STATS_SEED = 20240531
_CHUNK = 100

Scorer = Callable[[np.ndarray], np.ndarray]


def strategy_stem(strategy: str) -> str:
    """A strategy's name as a file name (`unimodal:audio` → `unimodal__audio`), for every per-cell file."""
    return strategy.replace(":", "__")


def prediction_path(run_dir: Path, dataset: str, strategy: str) -> Path:
    return run_dir / "predictions" / dataset / f"{strategy_stem(strategy)}.parquet"


def write_predictions(frames: list[pd.DataFrame], path: Path) -> None:
    """One cell's test predictions, written atomically like every run file (bench/core/io.py): a full
    disk names this file and leaves neither a partial file nor a temporary copy behind (a plain
    `to_parquet` to a .tmp sibling did both, and its error named no file)."""
    buf = io.BytesIO()
    pd.concat(frames).to_parquet(buf)
    atomic_write_bytes(path, buf.getvalue())


@dataclass(frozen=True)
class Predictions:
    """Test predictions of one cell: `probs[u, i]` for unit u = (`replicates[u]`, `seeds[u]`) and example `index[i]`.

    `clusters[i]` is the cluster id (string) of example i; examples sharing it are resampled together.
    """

    replicates: np.ndarray  # [U] search replicate of each unit
    seeds: np.ndarray  # [U] evaluation seed of each unit
    index: np.ndarray  # [N] example ids (sorted)
    labels: np.ndarray  # [N]
    probs: np.ndarray  # [U, N, C]
    clusters: np.ndarray  # [N] cluster ids (str)

    @classmethod
    def read(cls, path: Path) -> Predictions:
        df = pd.read_parquet(path)
        if "replicate" not in df.columns:
            df["replicate"] = 0  # records from before search replicates: one search per cell
        df["replicate"] = df["replicate"].fillna(0).astype(int)
        df = df.sort_values(["replicate", "seed", "index"])
        units = df[["replicate", "seed"]].drop_duplicates().to_numpy()
        index = np.sort(df["index"].unique())
        probs = []
        for rep, seed in units:
            g = df[(df.replicate == rep) & (df.seed == seed)]
            if not np.array_equal(g["index"].to_numpy(), index):
                raise ValueError(f"{path}: replicate {rep} seed {seed} does not cover the same test examples as the others")
            probs.append(np.stack(g.prob.to_numpy()).astype(np.float64))
        first = df[(df.replicate == units[0][0]) & (df.seed == units[0][1])]
        clusters = (first["cluster"].astype(str).to_numpy() if "cluster" in df.columns and first["cluster"].notna().all()
                    else first["index"].astype(str).to_numpy())
        return cls(units[:, 0].astype(int), units[:, 1].astype(int), index, first.label.to_numpy(), np.stack(probs),
                   clusters)

    @classmethod
    def unclustered(cls, replicates: np.ndarray, seeds: np.ndarray, labels: np.ndarray, probs: np.ndarray,
                    clusters: np.ndarray | None = None) -> Predictions:
        """Predictions built in memory (tests, simulations); clusters default to one per example."""
        n = len(labels)
        cl = np.arange(n).astype(str) if clusters is None else np.asarray(clusters).astype(str)
        return cls(np.asarray(replicates), np.asarray(seeds), np.arange(n), np.asarray(labels), np.asarray(probs), cl)

    @property
    def n_replicates(self) -> int:
        return len(np.unique(self.replicates))

    def common(self, other: Predictions) -> tuple[Predictions, Predictions]:
        """Both cells restricted to the test examples they share (their units stay their own)."""
        index = np.intersect1d(self.index, other.index)
        return self._on(index), other._on(index)

    def _on(self, index: np.ndarray) -> Predictions:
        ix = np.searchsorted(self.index, index)
        return Predictions(self.replicates, self.seeds, index, self.labels[ix], self.probs[:, ix], self.clusters[ix])

    def replicate(self, rep: int) -> Predictions:
        """The units of one search replicate only (what a one-search protocol would have seen)."""
        keep = self.replicates == rep
        return Predictions(self.replicates[keep], self.seeds[keep], self.index, self.labels, self.probs[keep],
                           self.clusters)

    @classmethod
    def stack(cls, parts: list[Predictions]) -> Predictions:
        """Search replicates read from separate files → one cell (replicate i = parts[i])."""
        first = parts[0]
        for p in parts[1:]:
            if not np.array_equal(p.index, first.index):
                raise ValueError("stacked replicates do not cover the same test examples")
        reps = np.concatenate([np.full(len(p.seeds), i) for i, p in enumerate(parts)])
        return cls(reps, np.concatenate([p.seeds for p in parts]), first.index, first.labels,
                   np.concatenate([p.probs for p in parts]), first.clusters)

    def without_clusters(self) -> Predictions:
        """The same predictions with every example its own cluster (the naive, row-level bootstrap)."""
        return Predictions(self.replicates, self.seeds, self.index, self.labels, self.probs, self.index.astype(str))


def cluster_weights(clusters: np.ndarray) -> list[np.ndarray]:
    """The cluster bootstrap as example weights, in chunks of [b, N]: each resample draws as many clusters
    as there are, with replacement; an example's weight is how often its cluster was drawn."""
    _, codes = np.unique(clusters, return_inverse=True)
    g, n = int(codes.max()) + 1, len(codes)
    out = []
    for c, start in enumerate(range(0, N_RESAMPLES, _CHUNK)):
        rng = np.random.default_rng([STATS_SEED, n, g, c])
        counts = rng.multinomial(g, np.full(g, 1.0 / g), size=min(_CHUNK, N_RESAMPLES - start))  # [b, G]
        out.append(counts[:, codes].astype(np.float64))
    return out


def _accuracy_scorer(p: Predictions) -> Scorer:
    correct = (p.probs.argmax(-1) == p.labels[None, :]).astype(np.float64)  # [U, N]

    def score(w: np.ndarray) -> np.ndarray:
        return (w @ correct.T) / w.sum(1, keepdims=True)

    return score


def _binary_auroc_scorer(p: Predictions) -> Scorer:
    """Tie-aware AUROC of P(class 1) with example weights (bootstrap multiplicities), vectorised over resamples."""
    prepared = []
    for k in range(len(p.seeds)):
        s = p.probs[k, :, 1]
        order = np.argsort(s, kind="stable")
        ss = s[order]
        starts = np.flatnonzero(np.r_[True, ss[1:] != ss[:-1]])
        prepared.append((order, starts))
    y = (p.labels == 1).astype(np.float64)

    def score(w: np.ndarray) -> np.ndarray:
        out = np.empty((w.shape[0], len(prepared)))
        for k, (order, starts) in enumerate(prepared):
            cw, yo = w[:, order], y[order]
            pos = np.add.reduceat(cw * yo, starts, axis=1)
            neg = np.add.reduceat(cw * (1 - yo), starts, axis=1)
            below = np.cumsum(neg, axis=1) - neg
            denom = pos.sum(1) * neg.sum(1)
            num = (pos * (below + 0.5 * neg)).sum(1)
            out[:, k] = np.where(denom > 0, num / np.where(denom > 0, denom, 1), 0.5)
        return out

    return score


def _generic_scorer(p: Predictions, metric: str) -> Scorer:
    fn = metric_lib.METRICS.get(metric)
    rows = np.arange(len(p.labels))

    def score(w: np.ndarray) -> np.ndarray:
        out = np.empty((w.shape[0], len(p.seeds)))
        for b in range(w.shape[0]):
            idx = np.repeat(rows, w[b].astype(int))
            out[b] = [fn(p.labels[idx], p.probs[u, idx]) for u in range(len(p.seeds))]
        return out

    return score


def scorer(p: Predictions, metric: str) -> Scorer:
    """`score(w[b, N]) -> [b, U]`: the metric of every unit under every weighting of the test examples."""
    if metric == "accuracy":
        return _accuracy_scorer(p)
    if metric == "auroc" and p.probs.shape[-1] == 2:
        return _binary_auroc_scorer(p)
    return _generic_scorer(p, metric)


def unit_scores(p: Predictions, metric: str) -> np.ndarray:
    """[U]: every unit's metric on the whole test set."""
    return scorer(p, metric)(np.ones((1, len(p.labels))))[0]


def bootstrap_unit_means(p: Predictions, metric: str, weights: list[np.ndarray]) -> np.ndarray:
    """[N_RESAMPLES]: the mean over units of the metric under each cluster resample (units held fixed)."""
    score = scorer(p, metric)
    return np.concatenate([score(w).mean(1) for w in weights])
