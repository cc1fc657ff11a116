"""The NB-weighted lexical view (bench/features/encoders.py `tfidf` with `nb_weight`), on generated text."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fusebench.core.errors import ConfigError
from fusebench.features.encoders import build_encoder
from fusebench.features.lexical import nb_log_count_ratio


def _corpus(n: int, seed: int) -> tuple[list[str], list[int]]:
    """Sentiment carried by one rare word among many frequent neutral ones: TF-IDF's leading SVD
    directions follow the frequent words, NB weighting lifts the informative one."""
    rng = np.random.default_rng(seed)
    neutral = [f"w{i}" for i in range(60)]
    texts, labels = [], []
    for _ in range(n):
        y = int(rng.integers(0, 2))
        words = list(rng.choice(neutral, size=30))
        if rng.random() < 0.9:
            words.append("superb" if y else "dreadful")
        texts.append(" ".join(words))
        labels.append(y)
    return texts, labels


def _linear_probe_accuracy(opts: dict) -> float:
    from sklearn.linear_model import LogisticRegression

    train, y_train = _corpus(600, 0)
    test, y_test = _corpus(400, 1)
    enc = build_encoder("tfidf", {"components": 4, "min_df": 1, **opts}, torch.device("cpu"))
    enc.fit(train, y_train)
    a, b = enc.encode(train).pooled.numpy(), enc.encode(test).pooled.numpy()
    return float((LogisticRegression(max_iter=1000).fit(a, y_train).predict(b) == np.asarray(y_test)).mean())


def test_nb_weighting_keeps_the_informative_direction_in_few_components():
    plain, nb = _linear_probe_accuracy({}), _linear_probe_accuracy({"nb_weight": True})
    assert nb > 0.85 and nb > plain + 0.1, (plain, nb)


def test_log_count_ratio_sign_and_binary_only():
    import scipy.sparse as sp

    m = sp.csr_matrix(np.array([[3.0, 0.0], [2.0, 0.0], [0.0, 4.0]]))
    r = nb_log_count_ratio(m, [1, 1, 0])
    assert r[0] > 0 > r[1]
    with pytest.raises(ConfigError, match="binary"):
        nb_log_count_ratio(m, [0, 1, 2])
    with pytest.raises(ConfigError, match="labels"):
        nb_log_count_ratio(m, None)


def test_lr_score_is_out_of_fold_on_train_rows():
    """The appended score of a train text is its out-of-fold logit: on a corpus of pure noise it is
    as uninformative on train as on new text (an in-sample score would look near-perfect on train)."""
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice([f"w{i}" for i in range(400)], size=12)) + f" id{j}" for j in range(300)]
    labels = rng.integers(0, 2, 300).tolist()
    enc = build_encoder("tfidf", {"components": 4, "min_df": 1, "lr_score": True}, torch.device("cpu"))
    enc.fit(texts, labels)
    feats = enc.encode(texts).pooled
    assert feats.shape == (300, 5)
    train_acc = float(((feats[:, -1].numpy() > 0).astype(int) == np.asarray(labels)).mean())
    in_sample = float((enc.lr.predict(enc.vectorizer.transform(texts)) == np.asarray(labels)).mean())
    assert in_sample > 0.95 and train_acc < 0.65, (in_sample, train_acc)


def test_lr_score_carries_the_signal_on_held_out_text():
    train, y_train = _corpus(600, 0)
    test, y_test = _corpus(400, 1)
    enc = build_encoder("tfidf", {"components": 2, "min_df": 1, "lr_score": True}, torch.device("cpu"))
    enc.fit(train, y_train)
    score = enc.encode(test).pooled[:, -1].numpy()
    assert float(((score > 0).astype(int) == np.asarray(y_test)).mean()) > 0.85
