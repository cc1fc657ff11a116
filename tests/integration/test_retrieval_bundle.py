"""flickr8k-retrieval end to end on the real bundle: real images and captions, real encoders, real
optuna studies for the dual encoder and a fusion re-ranker; resuming re-runs nothing."""

from __future__ import annotations

import pandas as pd
import pytest

from fusebench.cli import main
from fusebench.config import catalog
from fusebench.data.builders import build_tables
from fusebench.results.records import load_records

pytestmark = pytest.mark.integration


def test_tables_hold_every_caption_of_every_image(data_root):
    t = build_tables(catalog.get_dataset("flickr8k-retrieval"), data_root, "tiny")
    test = t.splits["test"]
    assert len(test) == 12 * 5
    assert len(set(test["image_id"])) == 12 and sorted(set(test["group"])) == list(range(12))
    assert len(set(test["caption"])) == 60  # Flickr8k captions of one split are distinct


def test_tiny_retrieval_run_and_resume(tmp_path, data_root, capsys):
    """Two search replicates (R = 2) × two seeds per cell, as classification cells; throughput recorded."""
    out = tmp_path / "run"
    args = ["run", "--datasets", "flickr8k-retrieval", "--strategies", "concat,unimodal", "--size", "tiny",
            "--trials", "2", "--seeds", "2", "--replicates", "2", "--out", str(out), "--data-dir", str(data_root)]
    assert main(args) == 0
    records = load_records(out / "results.jsonl")
    assert sorted({r.strategy for r in records}) == ["dual_encoder", "rerank:concat"]  # unimodal cannot score pairs
    for name in ("dual_encoder", "rerank:concat"):
        rows = [r for r in records if r.strategy == name]
        assert sorted((r.replicate, r.seed) for r in rows) == [(0, 1000), (0, 1001), (1, 1000), (1, 1001)], name
        assert len({r.sampler["seed"] for r in rows}) == 2  # each replicate its own sampler seed
        assert rows[0].stats["n_replicates"] == 2 and rows[0].stats["n_seeds"] == 2
        tp = rows[0].throughput
        assert tp is not None and tp.train_samples_per_s > 0 and tp.infer_samples_per_s > 0, tp
        assert tp.repetitions >= 1 and tp.device.startswith("cpu")
    for r in records:
        m = r.metrics
        assert r.status == "ok" and r.main_metric == pytest.approx(
            sum(m[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10)))
        assert all(0 <= m[f"{d}_r{k}"] <= 100 for d in ("i2t", "t2i") for k in (1, 5, 10))
        assert r.n_trials == 2 and "ci95_low" in r.stats
    rerank = next(r for r in records if r.strategy == "rerank:concat")
    assert rerank.params["rerank_k"] == 10 and "p_vs_dual_encoder" in rerank.stats
    preds = pd.read_parquet(out / "predictions" / "flickr8k-retrieval" / "rerank__concat.parquet")
    assert len(preds) == 2 * 2 * (12 + 60) and preds["cluster"].str.endswith(".jpg").all()
    assert sorted(set(preds["replicate"])) == [0, 1]
    assert {p.name for p in (out / "history" / "flickr8k-retrieval").glob("*.csv")} >= {
        "dual_encoder.csv", "rerank__concat.csv"}  # trial history exported at run time for the report
    assert not list((out / "partial").rglob("*.json"))  # each cell's stored seeds go once its records are written
    board = (out / "leaderboard.md").read_text()
    assert "flickr8k-retrieval — retrieval detail" in board and "the dual encoder alone" in board
    assert "| 2×2 |" in board and "queries/s" in board
    capsys.readouterr()
    assert main(args) == 0
    assert "0 cell(s) ok, 0 failed, 2 already done" in capsys.readouterr().out


def test_rerankers_in_two_cell_processes_score_as_in_one(tmp_path, data_root):
    """`--jobs 2`: the dual encoder cell in the run's process, then the re-rankers in the cell pool, each
    worker retraining the dual encoders it evaluates; the records equal a `--jobs 1` run's."""
    got = {}
    for jobs in (1, 2):
        out = tmp_path / f"jobs{jobs}"
        assert main(["run", "--datasets", "flickr8k-retrieval", "--strategies", "concat,gmu,attention_weights",
                     "--size", "tiny", "--trials", "2", "--seeds", "2", "--jobs", str(jobs), "--out", str(out),
                     "--data-dir", str(data_root)]) == 0
        got[jobs] = {(r.strategy, r.replicate, r.seed): (r.metrics, r.params) for r in load_records(out / "results.jsonl")}
    assert len(got[1]) == 4 * 2 and got[2].keys() == got[1].keys()
    for key, (metrics, params) in got[1].items():
        assert got[2][key][1] == params, key
        assert got[2][key][0] == pytest.approx(metrics), key
