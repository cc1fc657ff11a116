"""Review of the retrieval cells' seed store (commit 76ce8ed): cases its own test does not reach."""

from __future__ import annotations

from pathlib import Path

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


def _ctx(out: Path) -> CellContext:
    return CellContext(budget=Budget(trials=1, timeout_s=60, seeds=2, replicates=2),
                       train=TrainConfig(epochs=2, patience=2, batch_size=64), timing=TimingConfig(),
                       device=torch.device("cpu"), storage=f"sqlite:///{out / 'o.db'}", out_dir=out,
                       rerank_k=5, rerank_negatives="random")


def _run(data, tables, ctx: CellContext, cells) -> dict:
    done: dict = {}
    try:
        for cell, outcome in RetrievalRun(data, tables, ctx).execute(cells):
            assert not isinstance(outcome, BaseException), outcome
            done[cell.strategy] = outcome
    except deadline.StopRequested:
        pass
    return done


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
    ctx = _ctx(tmp_path)

    real, calls, stop_at = rc._predictions, [], [2]

    def predictions_then_stop(*args, **kwargs):
        calls.append(args[:2])
        if len(calls) == stop_at[0]:  # both seeds of replicate 0 scored: stop at replicate 1's search
            monkeypatch.setenv(deadline.ENV, "0")
        return real(*args, **kwargs)

    monkeypatch.setattr(rc, "_predictions", predictions_then_stop)
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
