"""A retrieval task's re-rank cells run in the cell pool (`CellPool.execute_retrieval`), and score what they
score in one process: each worker retrains the dual encoders it needs, the same seeded models.

Before, every retrieval cell ran in the parent process, so a `--jobs 2` run of the standard suite trained
one re-ranker at a time on Flickr8k and left the second core idle for the whole task."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from fusebench.measure.timing import TimingConfig
from fusebench.run.cell import CellContext
from fusebench.run.parallel import CellPool
from fusebench.run.retrieval_cell import RetrievalRun, expand_retrieval_cells
from fusebench.run.status import strategy_code
from fusebench.search.study import Budget
from fusebench.training.loop import TrainConfig
from tests.test_retrieval_cells import _task


def _ctx(out: Path) -> CellContext:
    out.mkdir()
    return CellContext(budget=Budget(trials=2, timeout_s=120, seeds=2, replicates=2),
                       train=TrainConfig(epochs=2, patience=2, batch_size=64), timing=TimingConfig(),
                       device=torch.device("cpu"), storage=f"sqlite:///{out / 'o.db'}", out_dir=out, rerank_k=5)


def _scores(outcomes) -> dict[tuple[str, int, int], tuple[dict, float | None, dict]]:
    got = {}
    for cell, records in outcomes:
        assert not isinstance(records, BaseException), (cell, records)
        for r in records:
            got[r.strategy, r.replicate, r.seed] = (r.metrics, r.val_main_metric, r.params)
    return got


@pytest.mark.slow
def test_rerank_cells_run_in_the_pool_and_score_as_in_one_process(tmp_path: Path, one_thread) -> None:
    data, tables = _task({"train": 80, "val": 30, "test": 30})
    cells = expand_retrieval_cells("flickr8k-retrieval", ["concat", "gmu", "attention_weights"])
    assert len(cells) == 4
    inline = _scores(RetrievalRun(data, tables, _ctx(tmp_path / "inline")).execute(cells))
    pool = CellPool(jobs=2, threads=1)
    with pool:
        order = []
        pooled = {}
        for cell, records in pool.execute_retrieval(RetrievalRun(data, tables, _ctx(tmp_path / "pool")), cells):
            order.append(cell.strategy)
            pooled |= _scores([(cell, records)])
        assert pool._pool is not None  # the re-rankers went to worker processes
        workers = {p.pid for p in pool._pool._processes.values()}
    assert order[0] == "dual_encoder"  # every re-ranker reads its studies
    assert sorted(order[1:]) == ["rerank:attention_weights", "rerank:concat", "rerank:gmu"]
    assert len(workers) == 2
    assert pooled.keys() == inline.keys() and len(inline) == 4 * 4
    for key, (metrics, val, params) in inline.items():
        assert pooled[key][2] == params, key
        assert pooled[key][1] == pytest.approx(val), key
        assert pooled[key][0] == pytest.approx(metrics), key  # a worker's dual encoder is the parent's model


def test_a_pool_of_one_job_runs_retrieval_cells_through_the_retrieval_run(tmp_path: Path, one_thread) -> None:
    data, tables = _task({"train": 40, "val": 20, "test": 20})
    run = RetrievalRun(data, tables, dataclasses.replace(_ctx(tmp_path / "one"), budget=Budget(trials=1, timeout_s=60, seeds=1)))
    cells = expand_retrieval_cells("flickr8k-retrieval", ["concat", "gmu"])
    with CellPool(jobs=1, threads=1) as pool:
        outcomes = list(pool.execute_retrieval(run, cells))
        got = _scores(outcomes)
        assert pool._pool is None
        with pytest.raises(ValueError, match="execute_retrieval"):
            list(pool.execute(cells[1:], data, run.ctx, run.index))
    assert sorted(got) == [("dual_encoder", 0, 1000), ("rerank:concat", 0, 1000), ("rerank:gmu", 0, 1000)]
    # the code id a record carries is the one `timing status` compares it with (one rule, retrieval_code)
    for cell, records in outcomes:
        assert [r.code_id for r in records] == [strategy_code(cell.strategy)], cell
    others = (strategy_code("rerank:concat"), strategy_code("gmu"), strategy_code("dual_encoder"))
    assert strategy_code("rerank:gmu") not in others
