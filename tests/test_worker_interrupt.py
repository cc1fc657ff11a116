"""An interrupted `--jobs N` run: a worker whose cell was interrupted starts no queued cell, and the
parent treats a worker's KeyboardInterrupt as the run's interruption, not as a failed cell.

Seen on an H100 (reports/published/gpu-nvidia-h100/call1.log): after the suite's time box struck,
the 8 workers started `learned_weights`, `lmf`, `logit_mean`, `majority` and `mfb`, and `majority`
trained all 5 seeds, whose records the stopping parent then dropped."""

from __future__ import annotations

import pytest

from fusebench.run import parallel


def test_a_worker_refuses_the_cells_queued_to_it_after_an_interrupted_cell(monkeypatch):
    started: list[str] = []

    def interrupted(prepared, cell, ctx):
        started.append(cell)
        raise KeyboardInterrupt

    monkeypatch.setattr(parallel, "_interrupted", False)
    monkeypatch.setattr(parallel, "_run_job", interrupted)
    cell = type("C", (), {"dataset": "esc50", "strategy": "gmu"})()
    with pytest.raises(KeyboardInterrupt):
        parallel._job("p.pt", cell, None)
    monkeypatch.setattr(parallel, "_run_job", lambda prepared, cell, ctx: started.append(cell) or [])
    nxt = type("C", (), {"dataset": "esc50", "strategy": "learned_weights"})()
    with pytest.raises(KeyboardInterrupt, match="esc50/learned_weights not started"):
        parallel._job("p.pt", nxt, None)
    assert started == [cell]  # before: the next cell ran


def test_a_cell_interrupted_in_a_worker_stops_the_run_and_is_not_recorded_failed(tmp_path, synthetic_bundle, monkeypatch):
    from fusebench.cli import main
    from fusebench.results.records import load_records

    data, cfg = synthetic_bundle
    monkeypatch.setenv("FUSEBENCH_CONFIG_DIR", str(cfg))

    def execute(self, cells, data, ctx):  # what CellPool.execute yields when a worker's cell got Ctrl-C
        yield cells[0], KeyboardInterrupt()

    monkeypatch.setattr(parallel.CellPool, "execute", execute)
    out = tmp_path / "run"
    code = main(["run", "--datasets", "toy", "--strategies", "concat", "--trials", "2", "--seeds", "2",
                 "--data-dir", str(data), "--out", str(out), "--jobs", "2"])
    assert code == 130  # before: 0, with concat recorded as a failed cell
    results = out / "results.jsonl"
    assert not results.exists() or not [r for r in load_records(results) if r.status == "failed"]


def _cell_that_unwinds(marker: str) -> None:
    from test_pool_interrupt import _unwinding

    with parallel._cell_running():  # as `_job` runs a cell
        _unwinding(marker)


@pytest.mark.usefixtures("sigint_as_in_a_terminal")
@pytest.mark.slow
def test_the_ctrl_c_of_a_pool_with_idle_workers_lets_the_busy_one_unwind(tmp_path):
    """A group Ctrl-C at the end of a dataset: one worker trains the last (long) cell, the others
    wait for work. Before: the idle workers died of the KeyboardInterrupt in the executor's loop, the
    executor SIGTERMed the busy one mid-unwinding (its trial's `interrupted` mark lost) and the cell's
    outcome was BrokenProcessPool, which the parent records as a failed cell."""
    import concurrent.futures as cf
    import multiprocessing as mp
    import os
    import signal
    import sys
    import time
    from pathlib import Path
    from types import SimpleNamespace

    sys.path.insert(0, str(Path(__file__).parent))  # the spawned workers import this module's helpers
    pool = cf.ProcessPoolExecutor(3, mp_context=mp.get_context("spawn"), initializer=parallel._init_worker, initargs=(1,))
    try:
        marker = tmp_path / "busy"
        busy = pool.submit(_cell_that_unwinds, str(marker))
        for f in [pool.submit(os.getpid) for _ in range(4)]:
            f.result(timeout=120)
        deadline = time.monotonic() + 120
        while not Path(f"{marker}.started").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        workers = list(pool._processes.values())
        assert len(workers) == 3
        for proc in workers:
            os.kill(proc.pid, signal.SIGINT)
        assert isinstance(busy.exception(timeout=60), KeyboardInterrupt)
        assert marker.exists()  # unwound
        cell = SimpleNamespace(dataset="esc50", strategy="mfb")
        refused = [pool.submit(parallel._job, "p.pt", cell, None) for _ in range(3)]  # queued after the Ctrl-C
        for f in refused:
            assert isinstance(f.exception(timeout=60), KeyboardInterrupt)
        assert all(proc.is_alive() for proc in workers)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
