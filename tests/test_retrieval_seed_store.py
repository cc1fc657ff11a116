"""A retrieval cell stopped between two evaluation seeds keeps the seeds it scored (bench/run/seed_store.py).

Until now `RetrievalRun` kept a cell's seeds in memory only: a `--stop-after` deadline or a kill between
seed i and seed i+1 threw away every seed of the cell, and the next process retrained them all. On the
standard suite a re-ranking cell of a token strategy scores 15 seeds of several minutes each on this CPU,
so a session's sweep could never finish one. Here the run stops after the N-th scored seed (the dual
encoder's cell first, then a re-ranker's), resumes in a fresh `RetrievalRun`, and must (a) train only the
seeds it did not store and (b) end with the uninterrupted run's records and predictions, bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

import fusebench.run.retrieval_cell as rc
from fusebench.core import deadline
from fusebench.measure.timing import TimingConfig
from fusebench.run.cell import CellContext
from fusebench.run.retrieval_cell import RetrievalRun, expand_retrieval_cells
from fusebench.run.seed_store import SeedStore
from fusebench.search.study import Budget
from fusebench.training.loop import TrainConfig
from tests.test_retrieval_cells import _task

SAME = ("status", "params", "metrics", "main_metric", "val_main_metric", "best_epoch", "n_trials",
        "n_trials_complete", "cap_bound", "params_count", "data_fingerprint", "replicate", "seed")
SEEDS_PER_CELL = 4  # 2 replicates × 2 evaluation seeds


def _ctx(out: Path, negatives: str) -> CellContext:
    return CellContext(budget=Budget(trials=1, timeout_s=60, seeds=2, replicates=2),
                       train=TrainConfig(epochs=2, patience=2, batch_size=64), timing=TimingConfig(),
                       device=torch.device("cpu"), storage=f"sqlite:///{out / 'o.db'}", out_dir=out,
                       rerank_k=5, rerank_negatives=negatives)


def _run(data, tables, ctx: CellContext, cells) -> dict:
    """The cells' records as `execute` yields them, until a StopRequested ends the run."""
    done: dict = {}
    try:
        for cell, outcome in RetrievalRun(data, tables, ctx).execute(cells):
            assert not isinstance(outcome, BaseException), outcome
            done[cell.strategy] = outcome
    except deadline.StopRequested:
        pass
    return done


def stop_after_scoring(monkeypatch, stop_at: list[int]) -> list:
    """Pass the `--stop-after` deadline once the cell has scored its `stop_at[0]`-th seed (the next check
    stops the run); returns the calls, one per seed scored. `stop_at[0] = -1` lets a resumed run finish."""
    real, calls = rc._predictions, []

    def predictions_then_stop(*args, **kwargs):  # called once per seed it scores
        calls.append(args[:2])
        if len(calls) == stop_at[0]:
            monkeypatch.setenv(deadline.ENV, "0")  # the deadline has passed: the next check stops the run
        return real(*args, **kwargs)

    monkeypatch.setattr(rc, "_predictions", predictions_then_stop)
    return calls


def _predictions(out: Path, strategy: str) -> pd.DataFrame:
    return pd.read_parquet(out / "predictions" / "flickr8k-retrieval" / f"{strategy.replace(':', '__')}.parquet")


# stops: after the dual encoder's first seed (before its second), in its second replicate, and in the
# re-ranker's first replicate (the dual-encoder cell done; the next check is replicate 1's search)
@pytest.mark.parametrize("negatives", ["random", "hard"])
@pytest.mark.parametrize("scored", [1, 3, 6])
def test_a_retrieval_cell_stopped_between_seeds_resumes_them_to_the_same_numbers(
        tmp_path: Path, one_thread, monkeypatch, negatives: str, scored: int) -> None:
    monkeypatch.delenv(deadline.ENV, raising=False)
    data, tables = _task({"train": 60, "val": 20, "test": 20})
    cells = expand_retrieval_cells("flickr8k-retrieval", ["concat"])
    (tmp_path / "ref").mkdir()
    (tmp_path / "stopped").mkdir()
    reference = _run(data, tables, _ctx(tmp_path / "ref", negatives), cells)
    assert sorted(reference) == ["dual_encoder", "rerank:concat"]

    stop_at = [scored]
    calls = stop_after_scoring(monkeypatch, stop_at)
    ctx = _ctx(tmp_path / "stopped", negatives)
    first = _run(data, tables, ctx, cells)
    assert len(calls) == scored and len(first) == scored // SEEDS_PER_CELL
    monkeypatch.delenv(deadline.ENV)

    calls.clear()
    stop_at[0] = -1  # the resumed run goes to the end
    resumed = _run(data, tables, ctx, [c for c in cells if c.strategy not in first])
    assert len(calls) == 2 * SEEDS_PER_CELL - scored  # the stored seeds are not trained again
    done = {**first, **resumed}
    assert sorted(done) == sorted(reference)
    for strategy, records in done.items():
        want = reference[strategy]
        assert len(records) == len(want)
        for got, ref in zip(records, want, strict=True):
            for name in SAME:
                assert getattr(got, name) == getattr(ref, name), (strategy, got.replicate, got.seed, name)
        assert len({repr(r.throughput) for r in records}) == 1  # measured once per cell, a stored seed's reused
        pd.testing.assert_frame_equal(_predictions(ctx.out_dir, strategy), _predictions(tmp_path / "ref", strategy))


def test_an_unreadable_first_seed_does_not_give_the_cell_a_second_throughput(
        tmp_path: Path, one_thread, monkeypatch) -> None:
    """The store's promise: an unreadable entry is retrained, the others kept. When the entry that goes is
    the cell's first seed (the one whose fit measured the throughput) and the next seed is kept, the
    resumed cell must still carry one throughput, the kept one (as bench/run/cell.py `_evaluate` does:
    a kept seed's throughput is taken before any seed trains). Before the fix the loop measured it again
    for the retrained first seed, and the kept second seed kept the old one: two throughputs in one cell."""
    monkeypatch.delenv(deadline.ENV, raising=False)
    data, tables = _task({"train": 60, "val": 20, "test": 20})
    cells = [c for c in expand_retrieval_cells("flickr8k-retrieval", ["concat"]) if c.strategy == "dual_encoder"]
    ctx = _ctx(tmp_path, "random")

    stop_at = [2]  # both seeds of replicate 0 scored: stop at replicate 1's search
    calls = stop_after_scoring(monkeypatch, stop_at)
    assert _run(data, tables, ctx, cells) == {}
    monkeypatch.delenv(deadline.ENV)
    store = SeedStore(tmp_path, "flickr8k-retrieval", "dual_encoder")
    assert store.count() == 2
    first = ctx.budget.eval_seeds[0]
    entry, _ = store._paths(0, first)
    entry.write_text("{")  # unreadable: retrained, as the store's docstring says

    calls.clear()
    stop_at[0] = -1  # the resumed run goes to the end
    records = _run(data, tables, ctx, cells)["dual_encoder"]
    assert len(calls) == 3  # seed 0 of replicate 0 again, and replicate 1's two
    assert len({repr(r.throughput) for r in records}) == 1  # measured once per cell
