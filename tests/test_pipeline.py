"""Builder → encoders → cache → search → records on a generated parquet dataset (YAML only)."""

from __future__ import annotations

import json

import pytest
import torch

from fusebench.cli import main
from fusebench.config import catalog
from fusebench.data.builders import build_tables
from fusebench.features.cache import FeatureCache
from fusebench.features.extract import encode_task
from fusebench.results.records import load_records
from fusebench.strategies.base import STRATEGIES, FusionModel, register_strategy


@pytest.fixture()
def toy(synthetic_bundle, monkeypatch):
    data, cfg = synthetic_bundle
    monkeypatch.setenv("FUSEBENCH_CONFIG_DIR", str(cfg))
    return data, cfg


def test_grouped_split_keeps_groups_apart_and_sizes_apply(toy):
    data, _ = toy
    tables = build_tables(catalog.get_dataset("toy"), data, "small")
    train, val = tables.splits["train"], tables.splits["val"]
    assert set(train["group"]).isdisjoint(set(val["group"]))
    assert len(train) <= 60 and len(val) <= 20 and len(tables.splits["test"]) == 20
    full = build_tables(catalog.get_dataset("toy"), data, "full")
    assert len(full.splits["train"]) + len(full.splits["val"]) == 90
    assert full.fingerprint != tables.fingerprint  # the subset is part of the revision


def test_second_encoding_recomputes_nothing(toy, tmp_path):
    data, _ = toy
    cfg = catalog.get_dataset("toy")
    tables = build_tables(cfg, data, "small")
    cache = FeatureCache(tmp_path / "cache")
    first = encode_task(cfg, tables, cache, torch.device("cpu"))
    assert cache.misses == 6 and cache.hits == 0 and len(cache.writes) == 6  # 2 views × 3 splits
    again = FeatureCache(tmp_path / "cache")
    second = encode_task(cfg, tables, again, torch.device("cpu"))
    assert again.hits == 6 and again.misses == 0 and again.writes == []
    for split in ("train", "val", "test"):
        for view in ("lexical", "neural"):
            assert torch.equal(first.splits[split].pooled[view], second.splits[split].pooled[view])
    neural = first.splits["train"]
    assert neural.pooled["neural"].shape[1] == 16 and neural.tokens["neural"].shape[1:] == (8, 16)
    assert neural.tokens["lexical"].shape[1] == 1  # a view without tokens is a one-token sequence


def test_changing_an_encoder_option_changes_the_cache_entry(toy, tmp_path):
    data, _ = toy
    cfg = catalog.get_dataset("toy")
    tables = build_tables(cfg, data, "small")
    cache = FeatureCache(tmp_path / "cache")
    encode_task(cfg, tables, cache, torch.device("cpu"))
    import dataclasses

    views = dict(cfg.views)
    views["lexical"] = dataclasses.replace(views["lexical"], options={"components": 4, "min_df": 1})
    changed = dataclasses.replace(cfg, views=views)
    cache2 = FeatureCache(tmp_path / "cache")
    out = encode_task(changed, tables, cache2, torch.device("cpu"))
    assert cache2.misses == 3 and cache2.hits == 3
    assert out.splits["train"].pooled["lexical"].shape[1] == 4


def test_run_writes_records_leaderboard_and_resumes_without_duplicates(toy, tmp_path):
    data, _ = toy
    out = tmp_path / "run"
    args = ["run", "--suite", "toy", "--data-dir", str(data), "--out", str(out)]
    assert main(args) == 0
    records = load_records(out / "results.jsonl")
    strategies = {r.strategy for r in records}
    assert strategies == {"concat", "unimodal:lexical", "unimodal:neural", "majority"}
    assert len(records) == 4 * 2 and all(r.status == "ok" for r in records)
    r = next(r for r in records if r.strategy == "concat")
    assert r.n_trials == 2 and r.seed in (1000, 1001) and 0.0 <= r.main_metric <= 1.0
    assert r.throughput.infer_samples_per_s > 0 and r.params_count > 0 and r.device.startswith("cpu")
    assert set(r.metrics) == {"accuracy", "auroc"} and r.encoders.keys() == {"lexical", "neural"}
    assert set(r.robustness) == {"missing:lexical", "missing:neural", "noise:0.5", "noise:1.0", "noise:2.0"}
    assert all(v is None or 0.0 <= v <= 1.0 for v in r.robustness.values())
    uni = next(r for r in records if r.strategy == "unimodal:neural")
    assert set(uni.robustness) == {"noise:0.5", "noise:1.0", "noise:2.0"}
    meta = json.loads((out / "run.json").read_text())
    assert meta["data"]["toy"]["rows"]["test"] == 20 and meta["data"]["toy"]["rows"]["train"] <= 60
    counts = meta["data"]["toy"]["class_counts"]
    assert set(counts) == {"train", "val", "test"} and sum(counts["test"].values()) == 20
    assert meta["data"]["toy"]["missing_classes"] == {}
    import pandas as pd

    preds = pd.read_parquet(out / "predictions" / "toy" / "concat.parquet")
    tables = build_tables(catalog.get_dataset("toy"), toy[0], "small")
    first_seed = preds[preds["seed"] == preds["seed"].min()]
    assert first_seed["cluster"].tolist() == [str(g) for g in tables.splits["test"]["group"]]  # default: group column
    board = (out / "leaderboard.md").read_text()
    assert "## toy — accuracy" in board and "`concat`" in board
    assert (out / "leaderboard.csv").read_text().startswith("dataset,strategy,rank")
    before = (out / "results.jsonl").read_text()
    assert main(args) == 0  # resume: nothing left to do
    assert (out / "results.jsonl").read_text() == before


@pytest.fixture()
def exploding_strategy():
    @register_strategy("explodes_in_test", family="early", min_modalities=2, citation="test fixture")
    class Explodes(FusionModel):
        """Raises on every forward pass, to show that a failed cell does not stop the sweep."""

        def __init__(self, spec, params):
            super().__init__(spec, params)
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, inputs):
            raise RuntimeError("boom from the test strategy")

    yield "explodes_in_test"
    STRATEGIES._entries.pop("explodes_in_test")


def test_failed_cell_is_recorded_and_the_run_goes_on_then_exits_1(toy, tmp_path, exploding_strategy, capsys):
    data, _ = toy
    out = tmp_path / "run"
    code = main(["run", "--datasets", "toy", "--strategies", f"{exploding_strategy},concat", "--size", "small",
                 "--trials", "1", "--seeds", "1", "--epochs", "1", "--data-dir", str(data), "--out", str(out)])
    assert code == 1
    records = load_records(out / "results.jsonl")
    failed = [r for r in records if r.status == "failed"]
    assert len(failed) == 1 and failed[0].strategy == exploding_strategy and "boom from the test strategy" in failed[0].error
    assert any(r.strategy == "concat" and r.status == "ok" for r in records)
    assert "1 failed" in capsys.readouterr().out
