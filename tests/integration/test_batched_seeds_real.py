"""Batched seeds == sequential seeds on a real smoke cell (README: `--sequential-seeds` gives the same
results). AV-MNIST smoke, `concat` (searched dropout > 0), 2 trials, 3 evaluation seeds, run once
batched and once with `--sequential-seeds`: every seed's record must carry the same params, metrics,
validation score and best step. Before keyed dropout (bench/training/dropout.py) the two runs
differed per seed by up to 0.03 test accuracy and 50 steps of best_step."""

from __future__ import annotations

import pytest

from fusebench.cli import main
from fusebench.results.records import load_records

pytestmark = pytest.mark.integration


def test_avmnist_smoke_batched_seeds_equal_sequential_seeds(tmp_path, data_root):
    runs = {}
    for mode, extra in (("batched", []), ("sequential", ["--sequential-seeds"])):
        out = tmp_path / mode
        args = ["run", "-q", "--datasets", "avmnist", "--strategies", "concat", "--size", "smoke", "--trials", "2",
                "--seeds", "3", "--jobs", "1", "--data-dir", str(data_root), "--out", str(out), *extra]
        assert main(args) == 0
        runs[mode] = {(r.replicate, r.seed): r for r in load_records(out / "results.jsonl")}
    batched, sequential = runs["batched"], runs["sequential"]
    assert set(batched) == set(sequential) and len(batched) == 3
    assert {r.seeds_batched for r in batched.values()} == {3}
    assert {r.seeds_batched for r in sequential.values()} == {1}
    for key, got in batched.items():
        want = sequential[key]
        assert got.params == want.params and got.params["dropout"] > 0, key
        assert (got.best_step, got.best_epoch) == (want.best_step, want.best_epoch), key
        assert got.val_main_metric == pytest.approx(want.val_main_metric, abs=1e-9), key
        assert got.metrics == pytest.approx(want.metrics, abs=1e-9), key
