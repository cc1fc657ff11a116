"""Fine-tuning on the real bundle with the real all-MiniLM-L6-v2 and EfficientNet-Lite0 weights, at
the tiny size (24/12/12 Flickr8k images, two pairs each): the towers reproduce the cached frozen
features before training, last:1 trains exactly the last block, and a run puts frozen and
fine-tuned rows of one strategy side by side."""

from __future__ import annotations

import json

import pytest
import torch

from fusebench.config import catalog
from fusebench.config.loader import SuiteConfig
from fusebench.core.encmode import EncoderMode, FineTuneSettings
from fusebench.core.paths import cache_root
from fusebench.data.builders import build_tables
from fusebench.features.cache import FeatureCache
from fusebench.features.extract import encode_task
from fusebench.results.records import load_records
from fusebench.run.runner import RunConfig, run
from fusebench.strategies import STRATEGIES
from fusebench.training.finetune.setup import CellSetup, attach_raw, build_tower
from fusebench.training.loop import loss_of

pytestmark = pytest.mark.integration
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def flickr(data_root):
    cfg = catalog.get_dataset("flickr8k-itm")
    tables = build_tables(cfg, data_root, "tiny")
    data = encode_task(cfg, tables, FeatureCache(cache_root()), CPU)
    return attach_raw(data, tables, ["image", "text"], FineTuneSettings(), CPU)


@pytest.mark.parametrize("view", ["text", "image"])
def test_pretrained_tower_reproduces_the_cached_features(flickr, view):
    tower = build_tower(flickr, view, EncoderMode(), FineTuneSettings(), CPU).eval()
    with torch.no_grad():
        pooled, tokens = tower(flickr.raw["val"][view])
    cached = flickr.splits["val"]
    torch.testing.assert_close(pooled, cached.pooled[view], atol=2e-2, rtol=1e-2)
    torch.testing.assert_close(tokens, cached.tokens[view], atol=5e-2, rtol=2e-2)  # the cache keeps tokens in fp16


def test_last_1_trains_only_the_last_block_on_real_weights(flickr):
    setup = CellSetup(flickr, ("image", "text"), "pooled", EncoderMode.parse("last:1"), FineTuneSettings(), CPU)
    spec_dims = {v: flickr.splits["train"].pooled[v].shape[1] for v in ("image", "text")}
    from fusebench.strategies import FusionSpec

    model = setup.wrap(STRATEGIES.get("concat").build(FusionSpec(spec_dims, {"image": 9, "text": 12}, 2)))
    model.train()
    loss_of(model, setup.batch("train").take(torch.arange(8))).backward()
    grads = {n for n, p in model.towers.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert grads and all(n.startswith(("text.encoder.encoder.layer.5.", "image.encoder._blocks.15.",
                                        "image.encoder._conv_head", "image.encoder._bn1")) for n in grads), grads
    assert any(n.startswith("text.") for n in grads) and any(n.startswith("image.") for n in grads)


def test_frozen_and_fine_tuned_rows_side_by_side(tmp_path, data_root):
    suite = SuiteConfig(name="ft-tiny", description="", datasets=("flickr8k-itm",), strategies=("concat",), size="tiny",
                        trials=1, seeds=1, epochs=1, patience=1, patience_steps=0, min_steps=0, batch_size=16,
                        encoders=("frozen", "last:1"),
                        finetune=FineTuneSettings(max_length=24, eval_batch_size=24, stats_rows=16, cache_prefix=True))
    summary = run(RunConfig(suite=suite, out=tmp_path / "run", data_dir=str(data_root), device="cpu"))
    assert summary.cells_failed == 0 and summary.cells_ok == 2
    records = {r.strategy: r for r in load_records(tmp_path / "run" / "results.jsonl")}
    assert set(records) == {"concat", "concat+ft:last:1"}
    frozen, tuned = records["concat"], records["concat+ft:last:1"]
    assert (frozen.encoder_mode, tuned.encoder_mode) == ("frozen", "last:1")
    assert tuned.params_count > frozen.params_count + 1_000_000  # MiniLM's last layer + EfficientNet's last block
    assert tuned.throughput is not None and tuned.throughput.infer_samples_per_s > 0
    assert not any(k.startswith("noise:") for k in tuned.robustness) and "missing:image" in tuned.robustness
    board = (tmp_path / "run" / "leaderboard.md").read_text()
    assert "| `concat+ft:last:1` |" in board and "| `concat` |" in board
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert meta["config"]["suite"]["encoders"] == ["frozen", "last:1"]


@pytest.mark.parametrize("view", ["text", "image"])
def test_cached_prefix_matches_the_whole_tower_on_real_weights(flickr, view):
    mode, plain, cached = EncoderMode.parse("last:1"), FineTuneSettings(), FineTuneSettings(cache_prefix=True)
    a = CellSetup(flickr, (view,), "tokens", mode, plain, CPU)
    b = CellSetup(flickr, (view,), "tokens", mode, cached, CPU)
    ta, tb = build_tower(flickr, view, mode, plain, CPU).eval(), build_tower(flickr, view, mode, cached, CPU).eval()
    assert tb.start > 0 and ta.start == 0
    with torch.no_grad():
        pa, ka = ta(a.batch("val").inputs[view])
        pb, kb = tb(b.batch("val").inputs[view])
    torch.testing.assert_close(pa, pb, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(ka, kb, atol=1e-3, rtol=1e-3)
