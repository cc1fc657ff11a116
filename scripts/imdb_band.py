"""The IMDB lexical band (docs/bands.md): the `text_lexical` view of datasets_cfg/imdb.yaml, built and
encoded by fusebench's own code on the full official split (25k train incl. the 10% validation
carve-out, 25k test), scored with (a) the view's appended cross-fitted logistic-regression score
alone and (b) a logistic-regression probe on the whole standardised view. CPU only, no MiniLM.

    FUSEBENCH_DATA=... .venv/bin/python scripts/imdb_band.py
"""

from __future__ import annotations

import time

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from fusebench.config import catalog
from fusebench.core.paths import resolve_data_root
from fusebench.data.builders import build_tables
from fusebench.features.encoders import build_encoder


def main() -> None:
    t0 = time.perf_counter()
    cfg = catalog.get_dataset("imdb")
    view = cfg.views["text_lexical"]
    tables = build_tables(cfg, resolve_data_root(None), "full")
    train, test = tables.splits["train"], tables.splits["test"]
    enc = build_encoder(view.encoder, view.options, torch.device("cpu"))
    enc.fit(list(train[view.column]), list(train["label"]))
    x_train = enc.encode(list(train[view.column])).pooled.numpy()
    x_test = enc.encode(list(test[view.column])).pooled.numpy()
    y_train, y_test = np.asarray(train["label"]), np.asarray(test["label"])
    score_acc = float(((x_test[:, -1] > 0).astype(int) == y_test).mean())
    scaler = StandardScaler().fit(x_train)
    probe = LogisticRegression(max_iter=2000).fit(scaler.transform(x_train), y_train)
    probe_acc = float((probe.predict(scaler.transform(x_test)) == y_test).mean())
    print(f"imdb text_lexical {view.options}: train {len(train)}, test {len(test)}, width {x_train.shape[1]}")
    print(f"  cross-fitted LR score alone: test accuracy {score_acc:.4f}")
    print(f"  LR probe on the whole view:  test accuracy {probe_acc:.4f}  ({time.perf_counter() - t0:.0f}s)")


if __name__ == "__main__":
    main()
