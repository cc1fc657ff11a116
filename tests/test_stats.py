"""fusebench.results.stats: two-level bootstrap CIs, paired tests, the beats_best_unimodal rule, and that a run
puts them into every record, run.json and the leaderboard."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from fusebench.results import stats
from fusebench.results.records import Record


def _preds(labels: np.ndarray, acc_per_seed: list[float], seed: int, n_classes: int = 2) -> stats.Predictions:
    """Predictions whose correctness per seed is ~acc (independent per example), with soft probabilities."""
    rng = np.random.default_rng(seed)
    k, n = len(acc_per_seed), len(labels)
    probs = np.zeros((k, n, n_classes))
    for j, acc in enumerate(acc_per_seed):
        right = rng.random(n) < acc
        pred = np.where(right, labels, (labels + 1) % n_classes)
        conf = 0.5 + 0.5 * rng.random(n)
        probs[j, np.arange(n), pred] = conf
        probs[j, np.arange(n), (pred + 1) % n_classes] = 1 - conf
    return stats.Predictions(np.arange(1000, 1000 + k), np.arange(n), labels, probs)


LABELS = np.random.default_rng(0).integers(0, 2, 400)


def test_ci_covers_the_mean_shrinks_with_examples_and_is_reproducible():
    p = _preds(LABELS, [0.8, 0.82, 0.78], 1)
    lo, hi = stats.bootstrap_ci(p, "accuracy")
    mean = np.mean([(p.probs[k].argmax(1) == LABELS).mean() for k in range(3)])
    assert lo < mean < hi and hi - lo < 0.15
    assert stats.bootstrap_ci(p, "accuracy") == (lo, hi)  # seeded
    small = p.subset(p.seeds, p.index[:50])
    lo_s, hi_s = stats.bootstrap_ci(small, "accuracy")
    assert hi_s - lo_s > hi - lo  # fewer test examples → wider interval


def test_fast_binary_auroc_matches_sklearn_on_resamples():
    from sklearn.metrics import roc_auc_score

    p = _preds(LABELS, [0.7, 0.75], 2)
    p.probs[:, :, 1] = np.round(p.probs[:, :, 1], 1)  # ties
    p.probs[:, :, 0] = 1 - p.probs[:, :, 1]
    idx = np.random.default_rng(3).integers(0, len(LABELS), (5, len(LABELS)))
    fast = stats._binary_auroc_scorer(p)(idx)
    for b in range(5):
        for k in range(2):
            assert fast[b, k] == pytest.approx(roc_auc_score(LABELS[idx[b]], p.probs[k, idx[b], 1]))


def test_paired_test_detects_a_real_gap_and_not_a_null_one():
    good = _preds(LABELS, [0.85, 0.86, 0.84], 4)
    bad = _preds(LABELS, [0.70, 0.71, 0.69], 5)
    same = _preds(LABELS, [0.85, 0.86, 0.84], 6)  # same quality, different errors
    p_gap = stats.paired_p_value(good, bad, "accuracy")
    p_null = stats.paired_p_value(good, same, "accuracy")
    p_self = stats.paired_p_value(good, good, "accuracy")
    assert p_gap < 0.01 and p_null > 0.05 and p_self == 1.0
    assert stats.paired_p_value(good, bad, "auroc") < 0.05  # any metric works
    print(f"\npaired bootstrap p: gap={p_gap:.4f} null={p_null:.3f}")


def _write(run_dir, dataset, strategy, p: stats.Predictions) -> None:
    path = stats.prediction_path(run_dir, dataset, strategy)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"seed": int(s), "index": int(i), "label": int(p.labels[j]), "pred": int(p.probs[k, j].argmax()),
             "prob": p.probs[k, j].astype(np.float32)} for k, s in enumerate(p.seeds) for j, i in enumerate(p.index)]
    pd.DataFrame(rows).to_parquet(path)


def _records(strategy, family, p: stats.Predictions) -> list[Record]:
    return [Record(dataset="d", task="classification", strategy=strategy, family=family, modalities=["a"], seed=int(s),
                   status="ok", main_metric_name="accuracy", main_metric=float((p.probs[k].argmax(1) == p.labels).mean()))
            for k, s in enumerate(p.seeds)]


def test_beats_best_unimodal_needs_a_higher_mean_and_significance(tmp_path):
    cells = {
        "unimodal:a": ("unimodal", _preds(LABELS, [0.75, 0.76, 0.74], 10)),
        "unimodal:b": ("unimodal", _preds(LABELS, [0.60, 0.61, 0.62], 11)),
        "strong": ("mid", _preds(LABELS, [0.90, 0.91, 0.89], 12)),
        "tied": ("early", _preds(LABELS, [0.755, 0.765, 0.745], 13)),
        "logit_mean": ("late", _preds(LABELS, [0.77, 0.78, 0.76], 14)),
        "majority": ("baseline", _preds(LABELS, [0.5, 0.5, 0.5], 15)),
    }
    records = []
    for name, (family, p) in cells.items():
        _write(tmp_path, "d", name, p)
        records += _records(name, family, p)
    out = stats.dataset_stats(records, tmp_path)
    assert {s["best_unimodal"] for s in out.values()} == {"unimodal:a"}
    assert out["strong"]["beats_best_unimodal"] is True and out["strong"]["p_vs_best_unimodal"] < 0.05
    tied = out["tied"]
    assert tied["beats_best_unimodal"] is False  # whatever its mean, not significantly better
    assert tied["p_vs_best_unimodal"] > 0.05
    assert out["unimodal:a"]["beats_best_unimodal"] is None and out["unimodal:a"]["p_vs_best_unimodal"] is None
    assert out["majority"]["beats_best_unimodal"] is None
    assert out["logit_mean"]["p_vs_late_fusion"] is None and out["strong"]["p_vs_late_fusion"] < 0.05
    for s in out.values():
        assert s["ci95_low"] <= s["mean"] <= s["ci95_high"] or s["std"] == 0
        assert set(s) >= {"mean", "std", "ci95_low", "ci95_high", "p_vs_best_unimodal", "p_vs_late_fusion",
                          "best_unimodal", "beats_best_unimodal"}
    again = stats.attach_stats(records, tmp_path, "d")
    assert [r.stats for r in again] == [out[r.strategy] for r in records]


@pytest.fixture()
def toy(synthetic_bundle, monkeypatch):
    data, cfg = synthetic_bundle
    monkeypatch.setenv("FUSEBENCH_CONFIG_DIR", str(cfg))
    return data, cfg


def test_run_puts_stats_protocol_and_storage_into_records_run_json_and_leaderboard(toy, tmp_path):
    from fusebench.cli import main
    from fusebench.results.records import load_records

    data, _ = toy
    out = tmp_path / "run"
    assert main(["run", "--datasets", "toy", "--strategies", "concat,logit_mean,unimodal", "--size", "small",
                 "--trials", "2", "--seeds", "2", "--epochs", "2", "--data-dir", str(data), "--out", str(out)]) == 0
    records = load_records(out / "results.jsonl")
    assert len(records) == 4 * 2 and all(r.stats for r in records)
    concat = next(r for r in records if r.strategy == "concat")
    assert concat.sampler["name"] == "TPESampler" and concat.sampler["seed"] == 0
    assert concat.pruner == {"name": "MedianPruner", "n_startup_trials": 2, "n_warmup_steps": 2, "step": "epoch",
                             "value": "validation main metric"}
    assert concat.stats["best_unimodal"] in ("unimodal:lexical", "unimodal:neural")
    assert isinstance(concat.stats["beats_best_unimodal"], bool) and concat.stats["p_vs_late_fusion"] is not None
    assert concat.stats["mean"] == pytest.approx(np.mean([r.main_metric for r in records if r.strategy == "concat"]))
    assert (out / "optuna.journal").is_file() and not (out / "optuna.db").exists()
    meta = json.loads((out / "run.json").read_text())
    assert meta["config"]["storage"].startswith("journal:///") and meta["protocol"]["sampler"]["name"] == "TPESampler"
    assert meta["protocol"]["pruner"]["name"] == "MedianPruner"
    board = pd.read_csv(out / "leaderboard.csv")
    assert {"ci95_low", "ci95_high", "p_vs_best_unimodal", "p_vs_late_fusion"} <= set(board.columns)
    assert board.ci95_low.notna().all()
    md = (out / "leaderboard.md").read_text()
    assert "p vs best unimodal" in md and "two-level bootstrap" in md
    before = (out / "results.jsonl").read_text()
    assert main(["run", "--datasets", "toy", "--strategies", "concat,logit_mean,unimodal", "--size", "small",
                 "--trials", "2", "--seeds", "2", "--epochs", "2", "--data-dir", str(data), "--out", str(out)]) == 0
    assert (out / "results.jsonl").read_text() == before  # stats recomputed on resume, identically


@pytest.mark.parametrize("url", ["mysql://x/y", "journal://relative.journal", "postgresql+psycopg://nohost", "nonsense"])
def test_bad_storage_url_is_a_usage_error(url):
    from fusebench.core.errors import UsageError
    from fusebench.search.storage import open_storage

    with pytest.raises(UsageError, match="storage"):
        open_storage(url)


def test_bad_storage_url_on_the_command_line_exits_2(toy, tmp_path, capsys):
    from fusebench.cli import main

    data, _ = toy
    code = main(["run", "--datasets", "toy", "--strategies", "concat", "--storage", "redis://x", "--out", str(tmp_path / "r"),
                 "--data-dir", str(data)])
    assert code == 2 and "unsupported storage URL" in capsys.readouterr().err
