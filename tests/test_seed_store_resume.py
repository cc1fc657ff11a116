"""A cell resumed from stored seeds ends with exactly the uninterrupted run's numbers (bench/run/seed_store.py).

tests/test_seed_store.py kills a run whose seeds train one after another. Here the cell stops (fails)
between storing seed i and seed i+1, with its seeds trained as one batched model (the default; the
rerun trains the seeds not stored as a smaller batch, or one seed alone) or one after another with
dropout drawn from torch's global generator (a token strategy). Every
record field that the fit, the test set or the search decides, and every stored prediction, must be
bit-for-bit the uninterrupted run's (the metrics include auroc, which sees the probabilities' last bits).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fusebench.results.records import load_records
from fusebench.run import seed_store
from fusebench.run.seed_store import SeedStore

SEEDS = 4
SAME = ("status", "params", "metrics", "main_metric", "val_main_metric", "best_epoch", "best_step", "n_trials",
        "n_trials_complete", "cap_bound", "flops_per_sample", "params_count", "robustness", "encoder_mode", "data_fingerprint")


def _args(data, out, strategy: str, replicates: int, extra: tuple[str, ...] = ()) -> list[str]:
    return ["run", "--datasets", "toy", "--strategies", strategy, "--size", "small", "--trials", "2",
            "--seeds", str(SEEDS), "--replicates", str(replicates), "--epochs", "40", "--data-dir", str(data),
            "--out", str(out), *extra]


def _predictions(out, strategy: str) -> pd.DataFrame:
    return pd.read_parquet(out / "predictions" / "toy" / f"{strategy}.parquet").reset_index(drop=True)


def stop_after_storing(monkeypatch, stored: int):
    """Make `SeedStore.save` raise once it has stored its `stored`-th seed (as a kill there would, minus the
    failed record); returns the real `save`, to put back before the resumed run."""
    save, saved = SeedStore.save, []

    def save_then_stop(self, *args, **kwargs):
        save(self, *args, **kwargs)
        saved.append(args[:2])
        if len(saved) == stored:
            raise RuntimeError("stopped after storing a seed")

    monkeypatch.setattr(seed_store.SeedStore, "save", save_then_stop)
    return save


# concat: the seeds train as one batched model; early_transformer: one after another (attention on one CPU
# thread), and its attention-weight dropout draws from torch's global generator, so seed k's fit starts
# where seed k-1's scoring left it: the resume puts back the state stored with seed k-1 (was: best_epoch 55, not 78)
CASES = [("concat", 1, 1), ("concat", 1, SEEDS - 1), ("concat", 2, SEEDS + 2), ("early_transformer", 1, 2)]


@pytest.mark.parametrize(("strategy", "replicates", "stored"), CASES)
@pytest.mark.slow
def test_a_cell_stopped_between_two_stored_seeds_resumes_to_the_same_numbers(
        synthetic_bundle, tmp_path, monkeypatch, caplog, strategy, replicates, stored):
    from fusebench.cli import main

    data, cfg = synthetic_bundle
    monkeypatch.setenv("FUSEBENCH_CONFIG_DIR", str(cfg))
    ref, out = tmp_path / "ref", tmp_path / "stopped"
    assert main(_args(data, ref, strategy, replicates)) == 0
    reference = {r.key: r for r in load_records(ref / "results.jsonl")}
    assert {r.seeds_batched for r in reference.values()} == {SEEDS if strategy == "concat" else 1}

    save = stop_after_storing(monkeypatch, stored)
    main(_args(data, out, strategy, replicates))
    assert [r.status for r in load_records(out / "results.jsonl")] == ["failed"]
    monkeypatch.setattr(seed_store.SeedStore, "save", save)

    caplog.clear()
    assert main(_args(data, out, strategy, replicates, ("-v",))) == 0
    kept = sum(int(m.split(" of ")[0].split()[-1]) for m in caplog.messages if "kept from an earlier process" in m)
    assert kept == stored
    records = {r.key: r for r in load_records(out / "results.jsonl")}
    assert set(records) == set(reference)
    for key, record in records.items():
        for name in SAME:
            assert getattr(record, name) == getattr(reference[key], name), (key, name)
    for replicate in range(replicates):  # the search's seconds: one figure per replicate, kept seeds' included
        assert len({r.search_seconds for r in records.values() if r.replicate == replicate}) == 1
    got, want = _predictions(out, strategy), _predictions(ref, strategy)
    pd.testing.assert_frame_equal(got.drop(columns="prob"), want.drop(columns="prob"))
    assert all(np.array_equal(a, b) for a, b in zip(got["prob"], want["prob"])), "probabilities differ"
    assert not (out / "partial").exists()


@pytest.mark.usefixtures("one_thread")  # as cells train on CPU (FUSEBENCH_TRAIN_THREADS, default 1)
def test_the_last_seed_of_a_batched_fit_trains_as_a_batch_of_one_with_the_same_weights():
    """On one thread a batch of one rounds as the full batch did (0.0 difference; one after another:
    ~3e-8). With two threads it measured ~1e-9 apart for concat (a smaller batch of 2+: 0.0)."""
    import torch

    from fusebench.strategies import STRATEGIES, FusionSpec
    from fusebench.training.batched import fit_seeds
    from fusebench.training.loop import Batch, TrainConfig

    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (96,), generator=g)
    x = torch.randn(96, 6, generator=g) + y[:, None] * 0.5
    train, val = Batch({"a": x[:64]}, y[:64]), Batch({"a": x[64:]}, y[64:])
    info = STRATEGIES.get("concat")

    def build(seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        return info.build(FusionSpec({"a": 6}, {"a": 1}, 2), info.params())  # default dropout: masks per seed

    cfg = TrainConfig(epochs=8, patience=3, batch_size=16)
    full = fit_seeds(build, [3, 4, 5], train, val, cfg, "accuracy")
    alone = fit_seeds(build, [5], train, val, cfg, "accuracy", batch_of=3)
    assert full.batched and alone.batched
    for name, want in full.results[2].model.state_dict().items():
        assert torch.equal(alone.results[0].model.state_dict()[name], want), name
    assert not fit_seeds(build, [5], train, val, cfg, "accuracy").batched  # a cell of one seed: one after another
