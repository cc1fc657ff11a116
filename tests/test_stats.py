"""fusebench.results.stats: intervals from the variance decomposition, paired tests, Holm, the beats_best_unimodal
rule, and that a run puts them into every record, run.json and the leaderboard."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from fusebench.results import stats
from fusebench.results.records import Record


def _preds(labels: np.ndarray, acc_per_unit: list[float], seed: int, n_classes: int = 2,
           replicates: list[int] | None = None) -> stats.Predictions:
    """Predictions whose correctness per unit is ~acc (independent per example), with soft probabilities.
    Units are seeds 1000.. of replicate 0 unless `replicates` names each unit's replicate."""
    rng = np.random.default_rng(seed)
    k, n = len(acc_per_unit), len(labels)
    probs = np.zeros((k, n, n_classes))
    for j, acc in enumerate(acc_per_unit):
        right = rng.random(n) < acc
        pred = np.where(right, labels, (labels + 1) % n_classes)
        conf = 0.5 + 0.5 * rng.random(n)
        probs[j, np.arange(n), pred] = conf
        probs[j, np.arange(n), (pred + 1) % n_classes] = 1 - conf
    reps = np.zeros(k, int) if replicates is None else np.asarray(replicates)
    return stats.Predictions.unclustered(reps, np.arange(1000, 1000 + k), labels, probs)


def _r3(accs: list[float], seed: int) -> tuple[list[float], int, int, list[int]]:
    """_preds arguments for three search replicates × len(accs) seeds (replicate shifts accuracy by -0.01/0/+0.01)."""
    return [a + d for d in (-0.01, 0.0, 0.01) for a in accs], seed, 2, [r for r in range(3) for _ in accs]


LABELS = np.random.default_rng(0).integers(0, 2, 400)


def test_ci_covers_the_mean_shrinks_with_examples_and_is_reproducible():
    p = _preds(LABELS, [0.8, 0.82, 0.78], 1)
    lo, hi = stats.bootstrap_ci(p, "accuracy")
    mean = np.mean([(p.probs[k].argmax(1) == LABELS).mean() for k in range(3)])
    assert lo < mean < hi and hi - lo < 0.15
    assert stats.bootstrap_ci(p, "accuracy") == (lo, hi)  # seeded
    small = stats.Predictions.unclustered(p.replicates, p.seeds, LABELS[:50], p.probs[:, :50])
    lo_s, hi_s = stats.bootstrap_ci(small, "accuracy")
    assert hi_s - lo_s > hi - lo  # fewer test examples → wider interval


def test_fast_binary_auroc_with_weights_matches_sklearn_on_resamples():
    from sklearn.metrics import roc_auc_score

    from fusebench.results.resample import scorer

    p = _preds(LABELS, [0.7, 0.75], 2)
    p.probs[:, :, 1] = np.round(p.probs[:, :, 1], 1)  # ties
    p.probs[:, :, 0] = 1 - p.probs[:, :, 1]
    idx = np.random.default_rng(3).integers(0, len(LABELS), (5, len(LABELS)))
    w = np.stack([np.bincount(row, minlength=len(LABELS)) for row in idx]).astype(float)
    fast = scorer(p, "auroc")(w)
    for b in range(5):
        for k in range(2):
            assert fast[b, k] == pytest.approx(roc_auc_score(LABELS[idx[b]], p.probs[k, idx[b], 1]))


def test_paired_test_detects_a_real_gap_and_not_a_null_one_and_refuses_r1():
    good = _preds(LABELS, *_r3([0.85, 0.86, 0.84], 4))
    bad = _preds(LABELS, *_r3([0.70, 0.71, 0.69], 5))
    same = _preds(LABELS, *_r3([0.85, 0.86, 0.84], 6))  # same quality, different errors
    p_gap = stats.paired_p_value(good, bad, "accuracy")
    p_null = stats.paired_p_value(good, same, "accuracy")
    p_self = stats.paired_p_value(good, good, "accuracy")
    assert p_gap < 0.001 and p_null > 0.05 and p_self == 1.0  # an analytic tail: far below 1/1001
    assert stats.paired_p_value(good, bad, "auroc") < 0.05  # any metric works
    one_search = _preds(LABELS, [0.85, 0.86, 0.84], 7)
    r1 = stats.paired_test(one_search, bad, "accuracy")
    assert r1.p is None and "R=1" in r1.note and r1.ci95[0] < r1.delta < r1.ci95[1]


def test_holm_known_answer():
    adj = stats.holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.5})
    assert adj == pytest.approx({"a": 0.04, "c": 0.09, "b": 0.09, "d": 0.5})
    assert stats.holm({}) == {}


def _write(run_dir, dataset, strategy, p: stats.Predictions) -> None:
    path = stats.prediction_path(run_dir, dataset, strategy)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"replicate": int(r), "seed": int(s), "index": int(i), "label": int(p.labels[j]),
             "pred": int(p.probs[k, j].argmax()), "prob": p.probs[k, j].astype(np.float32), "cluster": str(p.clusters[j])}
            for k, (r, s) in enumerate(zip(p.replicates, p.seeds)) for j, i in enumerate(p.index)]
    pd.DataFrame(rows).to_parquet(path)


def _records(strategy, family, p: stats.Predictions, val: float | None = None) -> list[Record]:
    return [Record(dataset="d", task="classification", strategy=strategy, family=family, modalities=["a"], seed=int(s),
                   status="ok", main_metric_name="accuracy", main_metric=float((p.probs[k].argmax(1) == p.labels).mean()),
                   val_main_metric=val, best_epoch=3)
            for k, s in enumerate(p.seeds)]


def test_beats_best_unimodal_needs_a_higher_mean_and_holm_significance_best_chosen_on_validation(tmp_path):
    cells = {  # name: family, predictions, validation score
        "unimodal:a": ("unimodal", _preds(LABELS, *_r3([0.75, 0.76, 0.74], 10)), 0.80),
        "unimodal:b": ("unimodal", _preds(LABELS, *_r3([0.78, 0.79, 0.77], 11)), 0.70),  # best on test, not val
        "strong": ("mid", _preds(LABELS, *_r3([0.90, 0.91, 0.89], 12)), 0.9),
        "tied": ("early", _preds(LABELS, *_r3([0.755, 0.765, 0.745], 13)), 0.8),
        "logit_mean": ("late", _preds(LABELS, *_r3([0.77, 0.78, 0.76], 14)), 0.8),
        "majority": ("baseline", _preds(LABELS, *_r3([0.5, 0.5, 0.5], 15)), 0.5),
        "random": ("baseline", _preds(LABELS, *_r3([0.5, 0.5, 0.5], 16)), 0.5),
        "dead": ("early", _preds(LABELS, *_r3([0.5, 0.5, 0.5], 17)), 0.5),
    }
    records = []
    for name, (family, p, val) in cells.items():
        _write(tmp_path, "d", name, p)
        records += _records(name, family, p, val)
    out = stats.dataset_stats(records, tmp_path)
    assert {s["best_unimodal"] for s in out.values()} == {"unimodal:a"}  # validation, not test
    assert {s["best_unimodal_chosen_on"] for s in out.values()} == {"validation"}
    strong = out["strong"]
    assert strong["beats_best_unimodal"] is True and strong["p_adj_vs_best_unimodal"] < 0.05
    assert strong["delta_ci95_low"] > 0 and strong["n_replicates"] == 3 and strong["includes_search_variance"]
    tied = out["tied"]
    assert tied["beats_best_unimodal"] is False  # whatever its mean, not significantly better
    assert tied["p_adj_vs_best_unimodal"] >= tied["p_vs_best_unimodal"] > 0.05
    assert out["unimodal:a"]["beats_best_unimodal"] is None and out["unimodal:a"]["p_vs_best_unimodal"] is None
    assert out["majority"]["beats_best_unimodal"] is None and out["majority"]["degenerate"] is None
    assert out["logit_mean"]["p_vs_late_fusion"] is None and out["strong"]["p_vs_late_fusion"] < 0.05
    assert out["dead"]["degenerate"] is True and out["dead"]["best_epochs"] == [3] * 9
    assert out["strong"]["degenerate"] is False and out["unimodal:a"]["degenerate"] is False
    for s in out.values():
        assert s["ci95_low"] <= s["mean"] <= s["ci95_high"] or s["std"] == 0
        assert set(s) >= {"mean", "std", "ci95_low", "ci95_high", "p_vs_best_unimodal", "p_vs_late_fusion",
                          "best_unimodal", "beats_best_unimodal"}
    again = stats.attach_stats(records, tmp_path, "d")
    assert [r.stats for r in again] == [out[r.strategy] for r in records]


def test_r1_cells_are_not_testable_and_say_so(tmp_path):
    records = []
    for name, family, accs, seed in [("unimodal:a", "unimodal", [0.75, 0.76], 20), ("strong", "mid", [0.95, 0.96], 21)]:
        p = _preds(LABELS, accs, seed)
        _write(tmp_path, "d", name, p)
        records += _records(name, family, p, 0.5)
    out = stats.dataset_stats(records, tmp_path)["strong"]
    assert out["p_vs_best_unimodal"] is None and out["beats_best_unimodal"] is None and "R=1" in out["test_note"]
    assert out["delta_vs_best_unimodal"] > 0.15 and not out["includes_search_variance"]


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
    # one search per cell (R=1): no paired test, and the record says why
    assert concat.stats["beats_best_unimodal"] is None and "R=1" in concat.stats["test_note"]
    assert concat.stats["delta_vs_best_unimodal"] is not None and concat.stats["n_clusters"] > 0
    assert concat.stats["mean"] == pytest.approx(np.mean([r.main_metric for r in records if r.strategy == "concat"]))
    assert (out / "optuna.journal").is_file() and not (out / "optuna.db").exists()
    meta = json.loads((out / "run.json").read_text())
    assert meta["config"]["storage"].startswith("journal:///") and meta["protocol"]["sampler"]["name"] == "TPESampler"
    assert meta["protocol"]["pruner"]["name"] == "MedianPruner"
    board = pd.read_csv(out / "leaderboard.csv")
    assert {"ci95_low", "ci95_high", "p_vs_best_unimodal", "p_vs_late_fusion"} <= set(board.columns)
    assert board.ci95_low.notna().all()
    md = (out / "leaderboard.md").read_text()
    assert "Δ vs best unimodal" in md and "p Holm" in md and "test-**cluster** bootstrap" in md and "**Verdict.**" in md
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


def test_prediction_files_without_replicate_or_cluster_columns_read_as_one_search_row_clusters(tmp_path):
    p = _preds(LABELS[:20], [0.8, 0.7], 30)
    path = tmp_path / "old.parquet"
    pd.DataFrame([{"seed": int(s), "index": int(i), "label": int(p.labels[j]), "pred": 0, "prob": p.probs[k, j]}
                  for k, s in enumerate(p.seeds) for j, i in enumerate(p.index)]).to_parquet(path)
    old = stats.Predictions.read(path)
    assert old.n_replicates == 1 and list(old.clusters) == [str(i) for i in range(20)]
    assert np.allclose(old.probs, p.probs)


def test_intervals_stay_inside_the_metric_range_near_a_bound(tmp_path):
    """A chance-level 50-class scorer over 3 seeds (the ESC-50 `random` row: mean 0.019, std 0.024):
    mean ± t·se left [0, 1] (ci95_low −0.027). The interval and the bootstrap CI are clipped to [0, 1]."""
    labels = np.random.default_rng(3).integers(0, 50, 80)
    probs = np.full((3, 80, 50), 1e-3)
    for k, n_right in enumerate((0, 0, 5)):  # accuracies 0, 0, 0.0625 over seeds
        pred = (labels + 1) % 50
        pred[:n_right] = labels[:n_right]
        probs[k, np.arange(80), pred] = 1.0
    p = stats.Predictions.unclustered(np.zeros(3, int), np.arange(1000, 1003), labels, probs)
    raw_lo, _ = stats.cell_estimate(p, "accuracy").interval()
    assert raw_lo < 0  # the unclipped t-interval leaves the range: what this test guards against
    lo, hi = stats.bootstrap_ci(p, "accuracy")
    assert 0.0 <= lo <= hi <= 1.0 and lo == 0.0
    _write(tmp_path, "d", "random", p)
    _write(tmp_path, "d", "unimodal:a", _preds(LABELS[:80] % 2, [0.999, 1.0, 1.0], 5))
    out = stats.dataset_stats(_records("random", "baseline", p) + _records("unimodal:a", "unimodal", p), tmp_path)
    row = out["random"]
    assert row["ci95_low"] == 0.0 and row["ci_clipped"] is True and "clipped" in row["ci_method"]
    for s in out.values():
        assert 0.0 <= s["ci95_low"] <= s["ci95_high"] <= 1.0
        assert s["delta_ci95_low"] is None or -1.0 <= s["delta_ci95_low"] <= s["delta_ci95_high"] <= 1.0


def test_auroc_interval_near_one_is_clipped():
    labels = np.repeat([0, 1], 20)
    probs = np.zeros((3, 40, 2))
    for k, flips in enumerate((0, 0, 6)):  # AUROC 1, 1 and lower
        score = labels.astype(float) * 0.8 + 0.1
        score[:flips] = 0.95  # negatives ranked above every positive
        probs[k, :, 1], probs[k, :, 0] = score, 1 - score
    p = stats.Predictions.unclustered(np.zeros(3, int), np.arange(3), labels, probs)
    assert stats.cell_estimate(p, "auroc").interval()[1] > 1  # unclipped
    lo, hi = stats.bootstrap_ci(p, "auroc")
    assert hi == 1.0 and lo < hi
