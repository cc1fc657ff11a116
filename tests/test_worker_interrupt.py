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
