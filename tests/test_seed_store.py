"""Evaluated seeds survive a kill (bench/run/seed_store.py).

A cell's records reached results.jsonl only when all R × K evaluation fits were done, so a kill
during the evaluation lost every fit of the cell; on this CPU a token-level cell's fits take longer
than a session, so such a cell could never finish. Each fitted seed is now stored at once, and a
resumed cell retrains only the seeds not stored.

The unit tests check the store (round trip, stale key, corrupt entry, clear). The kill test runs
the real CLI on the generated toy dataset and SIGKILLs it with some seeds stored and the cell not done
(tests/killpoint.py, race-free); the re-run must keep those seeds (same train_seconds: not retrained),
train the others, and end with exactly the uninterrupted run's records and scores.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from fusebench.results.records import Record, load_records
from fusebench.run.seed_store import SeedStore, rng_state, seed_key, set_rng_state
from fusebench.run.status import run_status
from fusebench.training.batched import fit_seeds
from fusebench.training.loop import Batch, TrainConfig
from tests.killpoint import LoggedPopen, kill_at

REPO = Path(__file__).resolve().parent.parent
SEEDS = 5


def _record(seed: int, metric: float = 0.5) -> Record:
    return Record(dataset="toy", task="classification", strategy="unimodal:text", family="unimodal",
                  modalities=["text"], seed=seed, replicate=1, status="ok", main_metric=metric,
                  main_metric_name="accuracy", metrics={"accuracy": metric}, train_seconds=1.25)


def _frame(seed: int) -> pd.DataFrame:
    return pd.DataFrame({"replicate": 1, "seed": seed, "index": [0, 1], "label": [0, 1], "cluster": ["a", "b"],
                         "pred": [0, 0], "prob": [[0.9, 0.1], [0.6, 0.4]]})


def test_a_stored_seed_comes_back_whole(tmp_path):
    store = SeedStore(tmp_path, "toy", "unimodal:text")
    key = seed_key({"params": {"lr": 0.01}, "seed": 7})
    store.save(1, 7, key, _record(7, 0.75), _frame(7))
    stored = store.load(1, 7, key)
    assert stored.record == _record(7, 0.75) and stored.rng is None  # saved without generator states
    pd.testing.assert_frame_equal(stored.predictions, _frame(7))
    assert store.count() == 1
    assert store.load(1, 8, key) is None  # another seed
    assert store.load(0, 7, key) is None  # another replicate


def test_the_generator_state_stored_with_a_seed_puts_torch_back_where_it_was(tmp_path):
    store = SeedStore(tmp_path, "toy", "concat")
    torch.manual_seed(3)
    torch.rand(5)  # somewhere in the stream, as after a seed's scoring
    store.save(0, 1, "k", _record(1), _frame(1), rng_state(torch.device("cpu")))
    expected = torch.rand(4)
    torch.manual_seed(99)  # elsewhere, as in a resumed process
    set_rng_state(store.load(0, 1, "k").rng, torch.device("cpu"))
    assert torch.equal(torch.rand(4), expected)


def test_a_seed_stored_for_other_inputs_is_not_reused(tmp_path):
    store = SeedStore(tmp_path, "toy", "concat")
    store.save(0, 1, seed_key({"params": {"lr": 0.01}}), _record(1), _frame(1))
    assert store.load(0, 1, seed_key({"params": {"lr": 0.02}})) is None


def test_a_seed_scored_on_another_device_is_not_reused(tmp_path, caplog):
    """A run resumed on another machine retrains the seeds the first one scored (bench/run/seed_store.py
    `load`), judged by the stored record's `device`; without a device to check, the key alone decides."""
    caplog.set_level("INFO", logger="fusebench.run.seed_store")
    store = SeedStore(tmp_path, "toy", "concat")
    key = seed_key({"seed": 1})
    store.save(0, 1, key, dataclasses.replace(_record(1), device="cuda:NVIDIA H100 80GB HBM3"), _frame(1))
    assert store.load(0, 1, key, "cuda:NVIDIA H100 80GB HBM3") is not None
    assert store.load(0, 1, key, "cuda:NVIDIA H200") is None
    assert "scored on cuda:NVIDIA H100 80GB HBM3, this process runs on cuda:NVIDIA H200" in caplog.text
    assert store.load(0, 1, key) is not None


@pytest.mark.parametrize("damage", ["entry", "predictions", "no_predictions"])
def test_a_damaged_entry_is_retrained_not_trusted(tmp_path, damage, caplog):
    store = SeedStore(tmp_path, "toy", "concat")
    key = seed_key({"seed": 1})
    store.save(0, 1, key, _record(1), _frame(1))
    entry, frame = store.folder / "concat.r0.s1.json", store.folder / "concat.r0.s1.parquet"
    if damage == "entry":
        entry.write_text(entry.read_text()[:40])  # cut short
    elif damage == "predictions":
        frame.write_bytes(b"PAR1 not a parquet file")
    else:
        frame.unlink()
    assert store.load(0, 1, key) is None
    assert "unreadable" in caplog.text and "concat.r0.s1.json" in caplog.text


def test_clear_removes_only_its_own_cell(tmp_path):
    mine, other = SeedStore(tmp_path, "toy", "unimodal"), SeedStore(tmp_path, "toy", "unimodal:text")
    for store in (mine, other):
        store.save(0, 1, "k", _record(1), _frame(1))
    mine.clear()
    assert mine.load(0, 1, "k") is None
    assert other.load(0, 1, "k") is not None  # "unimodal__text" is not "unimodal"
    other.clear()
    assert not (tmp_path / "partial").exists()  # the last cell's clear leaves no empty folders


@pytest.mark.parametrize("batched", [True, False])
def test_fit_seeds_reports_each_seed_as_it_is_fitted(batched):
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (64,), generator=g)
    x = {"a": torch.randn(64, 4, generator=g) + y[:, None]}
    train, val = Batch({"a": x["a"][:48]}, y[:48]), Batch({"a": x["a"][48:]}, y[48:])
    seen: list[tuple[int, int]] = []

    def build(seed: int) -> torch.nn.Module:
        from fusebench.strategies import STRATEGIES, FusionSpec

        torch.manual_seed(seed)
        info = STRATEGIES.get("concat")
        return info.build(FusionSpec({"a": 4}, {"a": 1}, 2), info.params())

    fits = fit_seeds(build, [3, 4, 5], train, val, TrainConfig(epochs=2, patience=1, batch_size=16), "accuracy",
                     batched=batched, on_result=lambda seed, result, s, together: seen.append((seed, together)))
    assert fits.batched is batched
    assert seen == [(3, 3 if batched else 1), (4, 3 if batched else 1), (5, 3 if batched else 1)]


# --- a real kill during the evaluation ---------------------------------------------------------


def _args(data: Path, out: Path) -> list[str]:
    # one cell, searched quickly, then SEEDS evaluation fits one after another (each stored at once)
    return ["run", "--datasets", "toy", "--strategies", "concat", "--size", "small", "--trials", "2",
            "--seeds", str(SEEDS), "--epochs", "60", "--sequential-seeds", "--data-dir", str(data), "--out", str(out)]


def _stored(out: Path) -> dict[int, float] | None:
    """seed → train_seconds of the stored seeds, once 1..SEEDS-1 of them are stored (None before/after)."""
    entries = sorted((out / "partial" / "toy").glob("concat.r0.s*.json"))
    if not entries or len(entries) >= SEEDS:
        return None
    try:
        blobs = [json.loads(p.read_text()) for p in entries]
    except (OSError, ValueError):
        return None
    return {b["record"]["seed"]: b["record"]["train_seconds"] for b in blobs}


@pytest.mark.slow
def test_kill_9_during_the_evaluation_keeps_the_fitted_seeds(synthetic_bundle, tmp_path, monkeypatch):
    from fusebench.cli import main

    data, cfg = synthetic_bundle
    monkeypatch.setenv("FUSEBENCH_CONFIG_DIR", str(cfg))
    ref, out = tmp_path / "ref", tmp_path / "killed"
    assert main(_args(data, ref)) == 0  # uninterrupted (and warms the feature cache)
    assert not (ref / "partial").exists()  # a finished cell leaves no stored seeds behind
    reference = {r.key: r for r in load_records(ref / "results.jsonl")}

    proc = LoggedPopen([sys.executable, "-m", "fusebench", *_args(data, out)], tmp_path / "killed.log", cwd=REPO,
                       env=os.environ.copy())
    try:
        stored = kill_at(proc, lambda: _stored(out), timeout_s=240, poll_s=0.005)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    print(f"\nkilled with seeds {sorted(stored)} of {SEEDS} stored")
    assert not (out / "results.jsonl").exists() or load_records(out / "results.jsonl") == []
    progress = run_status(out)["in_progress"]  # what `fusebench timing status` shows of the killed cell
    assert [(c["strategy"], c["trials_spent"], c["seeds_stored"], c["seeds_wanted"]) for c in progress] == \
        [("concat", [2], len(stored), SEEDS)]

    rerun = subprocess.run([sys.executable, "-m", "fusebench", *_args(data, out), "-v"], cwd=REPO,
                           env=os.environ.copy(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    log = rerun.stdout + rerun.stderr
    assert f"{len(stored)} of {SEEDS} evaluation seed(s) kept from an earlier process" in log, log[-3000:]

    records = {r.key: r for r in load_records(out / "results.jsonl")}
    assert set(records) == set(reference)
    for key, record in records.items():
        assert record.status == "ok"
        assert record.main_metric == reference[key].main_metric, key  # same seeds, same params: same scores
        assert record.metrics == reference[key].metrics, key
        if record.seed in stored:  # kept: the killed process's own fit, not a retrained one
            assert record.train_seconds == stored[record.seed], key
    assert not (out / "partial").exists()
    predictions = pd.read_parquet(out / "predictions" / "toy" / "concat.parquet")
    assert sorted(predictions["seed"].unique().tolist()) == sorted(r.seed for r in records.values())
    pd.testing.assert_frame_equal(predictions.reset_index(drop=True),
                                  pd.read_parquet(ref / "predictions" / "toy" / "concat.parquet").reset_index(drop=True))


def test_a_seed_stored_while_another_cell_clears_the_folder_is_stored(tmp_path, monkeypatch):
    """--jobs 2: the parent clears a finished cell's entries (and the dataset folder, when empty) while a
    worker stores the first seed of another cell of that dataset. A clear that lands between the
    worker's mkdir and its temporary file failed the worker's cell with FileNotFoundError."""
    import tempfile

    from fusebench.core import io as core_io

    done, running = SeedStore(tmp_path, "toy", "concat"), SeedStore(tmp_path, "toy", "early_sum")
    done.save(0, 1, "k", _record(1), _frame(1))
    real, cleared = tempfile.mkstemp, []

    def clear_first(*args, **kwargs):
        if not cleared:  # the parent's clear, just after the worker's mkdir
            (done.folder / "concat.r0.s1.json").unlink()
            (done.folder / "concat.r0.s1.parquet").unlink()
            done.clear()
            cleared.append(not done.folder.exists())
        return real(*args, **kwargs)

    monkeypatch.setattr(core_io.tempfile, "mkstemp", clear_first)
    running.save(0, 1, "k", _record(1), _frame(1))
    assert cleared == [True]  # the folder was gone when the worker wrote
    assert running.load(0, 1, "k") is not None


def test_an_entry_of_another_format_is_retrained(tmp_path, caplog):
    caplog.set_level("INFO", logger="fusebench.run.seed_store")
    store = SeedStore(tmp_path, "toy", "concat")
    store.save(0, 1, "k", _record(1), _frame(1))
    entry = store.folder / "concat.r0.s1.json"
    entry.write_text(entry.read_text().replace('"format": 1', '"format": 2'))
    assert store.load(0, 1, "k") is None
    assert "format 2" in caplog.text


@pytest.mark.slow
def test_seeds_left_by_a_kill_after_the_cells_records_were_written_are_removed(synthetic_bundle, tmp_path, monkeypatch):
    """A kill between write_records and clear (bench/run/runner.py) left the finished cell's seeds in
    partial/ for good: the cell is done, so nothing ever read or cleared them again."""
    from fusebench.cli import main

    data, cfg = synthetic_bundle
    monkeypatch.setenv("FUSEBENCH_CONFIG_DIR", str(cfg))
    out = tmp_path / "run"
    assert main(_args(data, out)) == 0
    store = SeedStore(out, "toy", "concat")
    other = SeedStore(out, "toy", "unimodal:text")  # a cell this run does not have: not ours to remove
    for seed in range(2):
        store.save(0, seed, "k", _record(seed), _frame(seed))
    other.save(0, 0, "k", _record(0), _frame(0))
    assert store.count() == 2
    assert main(_args(data, out)) == 0  # resumes: the cell is done, nothing trains
    assert store.count() == 0
    assert other.count() == 1
