"""The statistics checked the sceptic's way, on generated data with known answers: the paired test's
type-I error with a search effect (A/A simulation), interval coverage of a known mean, and that
resampling clusters (not rows) widens — or, for an image-only Flickr8k-style model, collapses — the CI."""

from __future__ import annotations

import numpy as np

from fusebench.results import stats
from fusebench.results.resample import Predictions

R, K, N_CLUSTERS = 3, 3, 100  # search replicates, evaluation seeds, test clusters (2 rows each)
SEARCH_SD, SEED_SD = 0.05, 0.01


def _population_test_set(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A fresh test set: per-cluster difficulty q ~ U(0.3, 0.8) (P(correct) of an average model), 2 rows per cluster."""
    q = rng.uniform(0.3, 0.8, N_CLUSTERS)
    clusters = np.repeat(np.arange(N_CLUSTERS), 2)
    labels = rng.integers(0, 2, 2 * N_CLUSTERS)
    return q, clusters, labels


def _cell(rng: np.random.Generator, q: np.ndarray, clusters: np.ndarray, labels: np.ndarray, r: int = R) -> Predictions:
    """One cell: r searches (each shifts P(correct) by N(0, SEARCH_SD)), K seeds each (N(0, SEED_SD));
    both rows of a cluster are right or wrong together (a duplicated image, a reused recording)."""
    shift = (rng.normal(0, SEARCH_SD, r)[:, None] + rng.normal(0, SEED_SD, (r, K))).ravel()  # [U]
    right_cluster = rng.random((r * K, N_CLUSTERS)) < np.clip(q[None, :] + shift[:, None], 0, 1)
    right = right_cluster[:, clusters]  # [U, N]
    pred = np.where(right, labels[None, :], 1 - labels[None, :])
    probs = np.stack([1.0 - pred, pred.astype(float)], -1) * 0.8 + 0.1
    reps = np.repeat(np.arange(r), K)
    return Predictions.unclustered(reps, np.tile(np.arange(K), r), labels, probs, clusters.astype(str))


def test_paired_test_type_one_error_with_a_search_effect_is_nominal():
    rng = np.random.default_rng(7)
    n_sim, rejected, untestable = 500, 0, 0
    for _ in range(n_sim):
        q, clusters, labels = _population_test_set(rng)
        a, b = _cell(rng, q, clusters, labels), _cell(rng, q, clusters, labels)  # A/A: same strategy, two searches
        p = stats.paired_p_value(a, b, "accuracy")
        untestable += p is None
        rejected += p is not None and p < 0.05
    rate = rejected / n_sim
    print(f"\nA/A type-I error with a search effect: {rate:.3f} over {n_sim} pairs")
    assert untestable == 0 and rate <= 0.07


def test_interval_covers_the_known_mean_at_its_nominal_rate():
    rng = np.random.default_rng(11)
    true_mean = 0.55  # E[q] with q ~ U(0.3, 0.8); search and seed shifts have mean 0
    n_sim, covered = 1000, 0
    for _ in range(n_sim):
        q, clusters, labels = _population_test_set(rng)
        lo, hi = stats.bootstrap_ci(_cell(rng, q, clusters, labels), "accuracy")
        covered += lo <= true_mean <= hi
    coverage = covered / n_sim
    print(f"\n95% interval coverage: {coverage:.3f} over {n_sim} simulated cells")
    assert 0.93 <= coverage <= 0.97


def test_clustered_interval_is_wider_than_the_row_level_one_on_duplicated_rows():
    rng = np.random.default_rng(3)
    q, clusters, labels = _population_test_set(rng)
    p = _cell(rng, q, clusters, labels, r=1)
    lo_c, hi_c = stats.bootstrap_ci(p, "accuracy")
    lo_r, hi_r = stats.bootstrap_ci(p.without_clusters(), "accuracy")
    est_c, est_r = stats.cell_estimate(p, "accuracy"), stats.cell_estimate(p.without_clusters(), "accuracy")
    assert est_c.var_test > 1.6 * est_r.var_test  # duplicated rows: about twice the test variance
    assert hi_c - lo_c > hi_r - lo_r


def test_image_only_auroc_interval_collapses_when_an_image_is_a_cluster():
    """Flickr8k-ITM: each image appears with its true caption (label 1) and a mismatched one (label 0); an
    image-only model scores both rows alike, so on any image-level resample its AUROC is exactly 0.5."""
    rng = np.random.default_rng(5)
    n_images, k = 150, 3
    labels = np.tile([1, 0], n_images)
    clusters = np.repeat(np.arange(n_images), 2).astype(str)
    score = np.repeat(rng.random((k, n_images)), 2, axis=1)  # same score for both rows of an image
    probs = np.stack([1 - score, score], -1)
    p = Predictions.unclustered(np.zeros(k, int), np.arange(k), labels, probs, clusters)
    lo_c, hi_c = stats.bootstrap_ci(p, "auroc")
    lo_r, hi_r = stats.bootstrap_ci(p.without_clusters(), "auroc")
    assert stats.cell_estimate(p, "auroc").var_test == 0.0 and lo_c == hi_c == 0.5
    assert hi_r - lo_r > 0.05  # the row-level bootstrap invents an interval around a model that knows nothing
