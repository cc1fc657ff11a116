"""Honest statistics for a dataset's cells, from the saved per-example test predictions.

Inputs: `RUN_DIR/predictions/<dataset>/<strategy>.parquet` (columns seed, index, label, pred, prob),
one row per evaluation seed × test example. Every cell of a dataset is scored on the same test
examples and the same evaluation seeds, so seeds × examples is a *crossed* design.

Confidence interval — two-level (hierarchical) bootstrap, percentile 95% interval:
  each of `N_RESAMPLES` (1000) replicates resamples the K evaluation seeds with replacement, then
  the N test examples with replacement (one example resample shared by all seeds of the replicate,
  as the examples are shared), computes the task's main metric for every drawn seed on the
  resampled examples and averages over the drawn seeds. This covers both sources of variance:
  training randomness (seeds) and the finite test set (examples). Resamples are seeded
  (`STATS_SEED`), so the numbers are reproducible and identical on resume.

Paired test — two-level paired bootstrap, two-sided:
  strategy A vs baseline B on their common seeds and examples, with *the same* seed and example
  draws for both in every replicate; d_b = metric_A(b) − metric_B(b), d = observed mean difference;
  p = (1 + #{|d_b − d| ≥ |d|}) / (1 + N_RESAMPLES) (the bootstrap distribution shifted to the null
  of no difference). It keeps the per-example pairing (both models see the same hard examples),
  works for any metric (accuracy, AUROC, F1), and is far more powerful than a Wilcoxon test over
  3–5 seeds, whose smallest attainable p-value is 0.25 (3 seeds) or 0.0625 (5 seeds). The smallest
  p it can report is 1/1001. No multiple-comparison correction is applied; p-values are reported raw.

`beats_best_unimodal` (fusion families early/mid/late only; None for unimodal and baselines):
  True iff the strategy's mean main metric is higher than the best unimodal cell's mean (the
  unimodal cell with the highest mean over seeds) AND p_vs_best_unimodal < ALPHA (0.05).
  A fusion strategy that is higher but not significantly so is False: it has not shown that fusing
  helps. The late-fusion baseline is `logit_mean` (p_vs_late_fusion).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fusebench.core import metrics as metric_lib
from fusebench.results.records import Record

log = logging.getLogger(__name__)

N_RESAMPLES = 1000
STATS_SEED = 20240531
ALPHA = 0.05
LATE_FUSION_BASELINE = "logit_mean"
FUSION_FAMILIES = ("early", "mid", "late")
_CHUNK = 50
CI_METHOD = f"two-level bootstrap (seeds, then examples), {N_RESAMPLES} resamples, percentile"
TEST_METHOD = f"paired two-level bootstrap (same seed and example draws), two-sided, {N_RESAMPLES} resamples"


def prediction_path(run_dir: Path, dataset: str, strategy: str) -> Path:
    return run_dir / "predictions" / dataset / f"{strategy.replace(':', '__')}.parquet"


@dataclass(frozen=True)
class Predictions:
    """Test predictions of one cell: `probs[k, i]` for seed `seeds[k]` and example `index[i]`."""

    seeds: np.ndarray  # [K]
    index: np.ndarray  # [N] example ids (sorted)
    labels: np.ndarray  # [N]
    probs: np.ndarray  # [K, N, C]

    @classmethod
    def read(cls, path: Path) -> Predictions:
        df = pd.read_parquet(path).sort_values(["seed", "index"])
        seeds = np.sort(df.seed.unique())
        index = np.sort(df["index"].unique())
        probs, labels = [], None
        for s in seeds:
            g = df[df.seed == s]
            if not np.array_equal(g["index"].to_numpy(), index):
                raise ValueError(f"{path}: seed {s} does not cover the same test examples as the others")
            probs.append(np.stack(g.prob.to_numpy()).astype(np.float64))
            labels = g.label.to_numpy() if labels is None else labels
        return cls(seeds, index, np.asarray(labels), np.stack(probs))

    def subset(self, seeds: np.ndarray, index: np.ndarray) -> Predictions:
        ks = np.searchsorted(self.seeds, seeds)
        ix = np.searchsorted(self.index, index)
        return Predictions(seeds, index, self.labels[ix], self.probs[ks][:, ix])


def _example_draws(n: int) -> list[np.ndarray]:
    """The example resamples, in chunks [b, n]; identical for every cell of a dataset (same n)."""
    out = []
    for c, start in enumerate(range(0, N_RESAMPLES, _CHUNK)):
        rng = np.random.default_rng([STATS_SEED, n, c])
        out.append(rng.integers(0, n, size=(min(_CHUNK, N_RESAMPLES - start), n)))
    return out


def _seed_draws(k: int) -> np.ndarray:
    return np.random.default_rng([STATS_SEED, k, 7]).integers(0, k, size=(N_RESAMPLES, k))


def _accuracy_scorer(p: Predictions) -> Callable[[np.ndarray], np.ndarray]:
    correct = (p.probs.argmax(-1) == p.labels[None, :]).astype(np.float64)  # [K, N]

    def score(idx: np.ndarray) -> np.ndarray:  # idx [b, N] → [b, K]
        return correct[:, idx].mean(-1).T

    return score


def _binary_auroc_scorer(p: Predictions) -> Callable[[np.ndarray], np.ndarray]:
    """Tie-aware AUROC of P(class 1) with bootstrap multiplicities as weights, vectorised over resamples."""
    n = len(p.labels)
    prepared = []
    for k in range(len(p.seeds)):
        s = p.probs[k, :, 1]
        order = np.argsort(s, kind="stable")
        ss = s[order]
        starts = np.flatnonzero(np.r_[True, ss[1:] != ss[:-1]])
        prepared.append((order, starts))
    y = (p.labels == 1).astype(np.float64)

    def score(idx: np.ndarray) -> np.ndarray:
        b = idx.shape[0]
        counts = np.bincount((np.arange(b)[:, None] * n + idx).ravel(), minlength=b * n).reshape(b, n).astype(np.float64)
        out = np.empty((b, len(prepared)))
        for k, (order, starts) in enumerate(prepared):
            cw, yo = counts[:, order], y[order]
            pos = np.add.reduceat(cw * yo, starts, axis=1)
            neg = np.add.reduceat(cw * (1 - yo), starts, axis=1)
            below = np.cumsum(neg, axis=1) - neg
            denom = pos.sum(1) * neg.sum(1)
            num = (pos * (below + 0.5 * neg)).sum(1)
            out[:, k] = np.where(denom > 0, num / np.where(denom > 0, denom, 1), 0.5)
        return out

    return score


def _generic_scorer(p: Predictions, metric: str) -> Callable[[np.ndarray], np.ndarray]:
    fn = metric_lib.METRICS.get(metric)

    def score(idx: np.ndarray) -> np.ndarray:
        return np.array([[fn(p.labels[row], p.probs[k, row]) for k in range(len(p.seeds))] for row in idx])

    return score


def _scorer(p: Predictions, metric: str) -> Callable[[np.ndarray], np.ndarray]:
    if metric == "accuracy":
        return _accuracy_scorer(p)
    if metric == "auroc" and p.probs.shape[-1] == 2:
        return _binary_auroc_scorer(p)
    return _generic_scorer(p, metric)


def replicate_matrix(p: Predictions, metric: str) -> np.ndarray:
    """[N_RESAMPLES, K]: the metric of every seed on every example resample."""
    score = _scorer(p, metric)
    return np.concatenate([score(idx) for idx in _example_draws(len(p.index))])


def _over_seeds(m: np.ndarray) -> np.ndarray:
    """Second level: resample seeds in every replicate and average them → [N_RESAMPLES]."""
    draws = _seed_draws(m.shape[1])
    return np.take_along_axis(m, draws, axis=1).mean(1)


def bootstrap_ci(p: Predictions, metric: str) -> tuple[float, float]:
    reps = _over_seeds(replicate_matrix(p, metric))
    lo, hi = np.percentile(reps, [2.5, 97.5])
    return float(lo), float(hi)


def paired_p_value(a: Predictions, b: Predictions, metric: str) -> float | None:
    """Two-sided paired two-level bootstrap p-value for mean metric(a) − mean metric(b) (module doc)."""
    seeds = np.intersect1d(a.seeds, b.seeds)
    index = np.intersect1d(a.index, b.index)
    if len(seeds) == 0 or len(index) < 2:
        return None
    a, b = a.subset(seeds, index), b.subset(seeds, index)
    if not np.array_equal(a.labels, b.labels):
        raise ValueError("paired test: the two cells disagree on the test labels")
    fn = metric_lib.METRICS.get(metric)
    observed = float(np.mean([fn(a.labels, a.probs[k]) - fn(b.labels, b.probs[k]) for k in range(len(seeds))]))
    d = _over_seeds(replicate_matrix(a, metric) - replicate_matrix(b, metric))
    if observed == 0.0:
        return 1.0
    return float((1 + np.sum(np.abs(d - observed) >= abs(observed))) / (1 + len(d)))


def _mean_std(records: list[Record]) -> tuple[float, float]:
    v = np.array([r.main_metric for r in records], dtype=float)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def dataset_stats(records: list[Record], run_dir: Path) -> dict[str, dict[str, Any]]:
    """Statistics for every ok cell of ONE dataset (`records` = that dataset's records), keyed by strategy."""
    ok: dict[str, list[Record]] = {}
    for r in records:
        if r.status == "ok" and r.main_metric is not None:
            ok.setdefault(r.strategy, []).append(r)
    if not ok:
        return {}
    dataset = next(iter(ok.values()))[0].dataset
    metric = next(iter(ok.values()))[0].main_metric_name
    family = {s: rs[0].family for s, rs in ok.items()}
    means = {s: _mean_std(rs)[0] for s, rs in ok.items()}
    preds: dict[str, Predictions] = {}
    for s in ok:
        path = prediction_path(run_dir, dataset, s)
        if path.is_file():
            try:
                preds[s] = Predictions.read(path)
            except Exception as exc:  # noqa: BLE001 - a bad file costs that cell its CI, not the run
                log.warning("%s: unreadable predictions (%s); no CI for %s", path, exc, s)
    unimodal = [s for s in ok if family[s] == "unimodal"]
    best_uni = max(unimodal, key=lambda s: means[s]) if unimodal else None
    late = LATE_FUSION_BASELINE if LATE_FUSION_BASELINE in ok else None

    def p_vs(s: str, base: str | None) -> float | None:
        if base is None or s == base or s not in preds or base not in preds:
            return None
        try:
            return paired_p_value(preds[s], preds[base], metric)
        except Exception as exc:  # noqa: BLE001
            log.warning("%s: paired test %s vs %s failed: %s", dataset, s, base, exc)
            return None

    out = {}
    for s, rs in ok.items():
        mean, std = _mean_std(rs)
        lo = hi = None
        if s in preds:
            try:
                lo, hi = bootstrap_ci(preds[s], metric)
            except Exception as exc:  # noqa: BLE001
                log.warning("%s: bootstrap CI of %s failed: %s", dataset, s, exc)
        p_uni = p_vs(s, best_uni)
        beats = None
        if family[s] in FUSION_FAMILIES and best_uni is not None:
            beats = bool(mean > means[best_uni] and p_uni is not None and p_uni < ALPHA)
        out[s] = {
            "metric": metric,
            "mean": mean,
            "std": std,
            "n_seeds": len(rs),
            "n_examples": int(len(preds[s].index)) if s in preds else None,
            "ci95_low": lo,
            "ci95_high": hi,
            "ci_method": CI_METHOD,
            "best_unimodal": best_uni,
            "best_unimodal_mean": means[best_uni] if best_uni else None,
            "p_vs_best_unimodal": p_uni,
            "late_fusion_baseline": late,
            "p_vs_late_fusion": p_vs(s, late),
            "test": TEST_METHOD,
            "alpha": ALPHA,
            "beats_best_unimodal": beats,
        }
    return out


def attach_stats(records: list[Record], run_dir: Path, dataset: str) -> list[Record]:
    """All records, with the `stats` of `dataset`'s ok records (re)computed from its predictions."""
    import dataclasses

    stats = dataset_stats([r for r in records if r.dataset == dataset], run_dir)
    return [
        dataclasses.replace(r, stats=stats[r.strategy]) if r.dataset == dataset and r.status == "ok" and r.strategy in stats
        else r
        for r in records
    ]
