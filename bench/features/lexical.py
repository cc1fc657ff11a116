"""Supervised helpers of the lexical (TF-IDF) view, fitted on the train split only.

Why: an SVD of TF-IDF keeps the directions of largest variance, which for sentiment are mostly
topic, and loses the textbook linear baseline's strength (IMDB: TF-IDF 1–2-grams + logistic
regression 0.906, NBSVM 0.912; TF-IDF→SVD-256 + a searched MLP 0.883). Two label-aware remedies,
both fitted on train labels only: NB log-count-ratio column weights (Wang & Manning 2012) and a
cross-fitted logistic-regression score appended as one feature. See docs/bands.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fusebench.core.errors import ConfigError


def _binary(labels: Sequence[int] | None, option: str) -> np.ndarray:
    if labels is None:
        raise ConfigError(f"tfidf option {option}: true needs the train labels (a labelled train split)")
    y = np.asarray(labels)
    if set(np.unique(y).tolist()) - {0, 1}:
        raise ConfigError(f"tfidf option {option}: true needs binary 0/1 labels; set it false for this dataset. "
                          f"Got classes {sorted(np.unique(y).tolist())[:10]}")
    return y


def nb_log_count_ratio(matrix: Any, labels: Sequence[int] | None, alpha: float = 1.0) -> np.ndarray:
    """r = log((p/|p|) / (q/|q|)), p/q = alpha + column sums of the positive/negative rows (NBSVM)."""
    y = _binary(labels, "nb_weight")
    p = alpha + np.asarray(matrix[y == 1].sum(axis=0)).ravel()
    q = alpha + np.asarray(matrix[y == 0].sum(axis=0)).ravel()
    return np.log((p / p.sum()) / (q / q.sum())).astype(np.float64)


def cross_fitted_logistic(matrix: Any, labels: Sequence[int] | None, c: float, folds: int) -> tuple[Any, np.ndarray]:
    """(logistic regression fitted on all rows, out-of-fold decision values of every row)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    y = _binary(labels, "lr_score")
    lr = LogisticRegression(C=c, max_iter=1000)
    cv = StratifiedKFold(n_splits=max(2, min(folds, int(np.bincount(y).min()))), shuffle=True, random_state=0)
    oof = cross_val_predict(lr, matrix, y, cv=cv, method="decision_function")
    return lr.fit(matrix, y), np.asarray(oof, dtype=np.float64)
