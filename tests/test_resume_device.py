"""A run resumed on another device scores each unfinished cell's evaluation seeds on that device alone.

The seed store (bench/run/seed_store.py) keeps a cell's scored seeds across a stop or a kill. Its key held
the data, strategy, replicate, seed, params and training config, not the device: a CPU run resumed with
`--device cuda`, or a GPU run carried from an H100 to an H200 (reports/published/gpu-nvidia-h200, session 3),
kept the seeds scored on the first device and scored the rest on the second. One leaderboard row then
mixed two devices' seeds, and reused the first device's throughput for all of them under the second
device's name. Now a stored seed whose record's `device` (`cuda:<GPU name>` or `cpu:<processor>`) is not
this process's is retrained where the run resumes, and every record of a cell names one device.

There is one device here, so the resumed process is told another name (`device_name`, which both the check
and the record's `device` field use); the stop itself is real (tests/test_seed_store_resume.py's way).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import fusebench.run.cell as cell_module
import fusebench.run.retrieval_cell as rc
from fusebench.core import deadline
from fusebench.measure.timing import device_name
from fusebench.results.records import load_records
from fusebench.run import seed_store
from fusebench.run.retrieval_cell import expand_retrieval_cells
from fusebench.run.seed_store import SeedStore
from tests.test_retrieval_cells import _task
from tests.test_retrieval_seed_store import SEEDS_PER_CELL, _ctx, _run, stop_after_scoring
from tests.test_seed_store_resume import SEEDS, _args, stop_after_storing

OTHER = "cuda:Another GPU"


def _kept(messages: list[str]) -> int:
    return sum(int(m.split(" of ")[0].split()[-1]) for m in messages if "kept from an earlier process" in m)


@pytest.mark.parametrize("same_device", [True, False], ids=["same-device", "other-device"])
def test_a_classification_cell_resumed_on_another_device_retrains_the_seeds_scored_on_the_first(
        synthetic_bundle, tmp_path: Path, monkeypatch, caplog, same_device: bool) -> None:
    from fusebench.cli import main

    data, cfg = synthetic_bundle
    monkeypatch.setenv("FUSEBENCH_CONFIG_DIR", str(cfg))
    out, stored = tmp_path / "run", 2
    save = stop_after_storing(monkeypatch, stored)
    main(_args(data, out, "concat", 1))
    assert [r.status for r in load_records(out / "results.jsonl")] == ["failed"]
    monkeypatch.setattr(seed_store.SeedStore, "save", save)
    if not same_device:
        monkeypatch.setattr(cell_module, "device_name", lambda device: OTHER)

    caplog.clear()
    assert main(_args(data, out, "concat", 1, ("-v",))) == 0
    records = [r for r in load_records(out / "results.jsonl") if r.status == "ok"]
    assert len(records) == SEEDS
    if same_device:
        assert _kept(caplog.messages) == stored
        assert {r.device for r in records} == {device_name(torch.device("cpu"))}
    else:
        assert _kept(caplog.messages) == 0  # before: 2 kept, scored on the first device
        assert {r.device for r in records} == {OTHER}
    assert len({repr(r.throughput) for r in records}) == 1
    assert not (out / "partial").exists()
    assert len(json.loads((out / "run.json").read_text())["sessions"]) == 2  # the run.json says who ran it


def test_a_retrieval_cell_resumed_on_another_device_retrains_the_seeds_scored_on_the_first(
        tmp_path: Path, one_thread, monkeypatch) -> None:
    monkeypatch.delenv(deadline.ENV, raising=False)
    data, tables = _task({"train": 60, "val": 20, "test": 20})
    cells = [c for c in expand_retrieval_cells("flickr8k-retrieval", ["concat"]) if c.strategy == "dual_encoder"]
    ctx = _ctx(tmp_path, "random")
    stop_at = [1]
    calls = stop_after_scoring(monkeypatch, stop_at)
    assert _run(data, tables, ctx, cells) == {}
    monkeypatch.delenv(deadline.ENV)
    assert SeedStore(tmp_path, "flickr8k-retrieval", "dual_encoder").count() == 1

    calls.clear()
    stop_at[0] = -1
    monkeypatch.setattr(rc, "device_name", lambda device: OTHER)
    records = _run(data, tables, ctx, cells)["dual_encoder"]
    assert len(calls) == SEEDS_PER_CELL  # before: 3, the first device's seed kept
    assert {r.device for r in records} == {OTHER}
    assert len({repr(r.throughput) for r in records}) == 1
