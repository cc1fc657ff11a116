"""`fusebench timing status RUN_DIR --probe PROBE_DIR`: a long run's remaining cells estimated at a
short probe run's per-trial and per-seed rates (bench/run/probe_estimate.py), on hand-made records
whose arithmetic is known, and checked against a cell both runs finished."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fusebench.cli import main
from fusebench.core.errors import UsageError
from fusebench.results.records import Record, write_records
from fusebench.run.status import format_status, run_status


def _rec(ds: str, strategy: str, replicate: int, seed: int, search_s: float, n_trials: int,
         phases: dict[str, float], retried: int = 0, complete: bool = False) -> Record:
    return Record(dataset=ds, task="classification", strategy=strategy, family="early", modalities=["a"], seed=seed,
                  status="ok", replicate=replicate, search_seconds=search_s, n_trials=n_trials, phase_seconds=phases,
                  n_trials_retried=retried, sampler={"name": "TPESampler"} if n_trials else {},
                  search_seconds_complete=complete)


def _run_dir(path: Path, plan: dict[str, list[str]], trials: int, seeds: list[int], replicates: int,
             records: list[Record]) -> Path:
    path.mkdir()
    meta = {"config": {"suite": {"name": path.name}}, "plan": plan,
            "protocol": {"trials_per_study": trials, "eval_seeds": seeds, "replicates": replicates}}
    (path / "run.json").write_text(json.dumps(meta))
    write_records(path / "results.jsonl", records)
    return path


@pytest.fixture()
def probe(tmp_path: Path) -> Path:
    """5 trials, 1 replicate, 2 seeds. d/concat: 50 s / 5 trials = 10 s a trial, 10 s a seed.
    r/dual_encoder: 2 s a trial, 3 s a seed; r/rerank:concat: 4 s a trial, 6 s a seed (2 + 4 phases)."""
    recs = [_rec("d", "concat", 0, s, 50.0, 5, {"evaluation": 10.0}) for s in (1000, 1001)]
    recs += [_rec("r", "dual_encoder", 0, s, 10.0, 5, {"evaluation": 3.0}) for s in (1000, 1001)]
    recs += [_rec("r", "rerank:concat", 0, s, 20.0, 5, {"evaluation": 2.0, "throughput": 4.0}) for s in (1000, 1001)]
    recs += [_rec("d", "gmu", 0, 1000, 50.0, 5, {"evaluation": 1.0})]  # unfinished (1 of 2 seeds): no rate
    plan = {"d": ["concat", "gmu"], "r": ["dual_encoder", "rerank:concat"]}
    return _run_dir(tmp_path / "probe", plan, 5, [1000, 1001], 1, recs)


SEEDS = [1000, 1001, 1002, 1003, 1004]


def test_remaining_cells_at_the_probe_rates(tmp_path: Path, probe: Path) -> None:
    # the run: 20 trials, 3 replicates, 5 seeds; d/concat finished in 900 s (3 searches of 200 + 15 × 20)
    done = [_rec("d", "concat", r, s, 200.0, 20, {"evaluation": 20.0}) for r in range(3) for s in SEEDS]
    plan = {"d": ["concat", "gmu", "majority", "unimodal:a"], "r": ["dual_encoder", "rerank:gmu"]}
    run = _run_dir(tmp_path / "run", plan, 20, SEEDS, 3, done)
    status = run_status(run, [probe])
    d, r = status["tasks"]
    # gmu (not probed: the task's probed cells stand in) and unimodal:a (no probed unimodal cell: same):
    # 3 × (20 × 10 + 5 × 10) = 750 s each; majority: trivial, 0 s
    assert d["probe"] == {"seconds": 1500.0, "trivial": ["majority"], "unmatched": []}
    # dual_encoder: 3 × (20 × 2 + 5 × 3) = 165; rerank:gmu at rerank:concat's rates: 3 × (20 × 4 + 5 × 6) = 330
    assert r["probe"] == {"seconds": 495.0, "trivial": [], "unmatched": []}
    # d's own measured mean (900 s × 2 trainable cells left; majority counts 0) wins over the probe
    assert d["seconds_left"] == 1800.0 and r["seconds_left"] is None
    assert status["probe"]["seconds_left"] == 1800.0 + 495.0
    # the check: d/concat predicted 750 s at the probe's rates, measured 900 s
    assert status["probe"]["checks"] == [{"dataset": "d", "strategy": "concat", "predicted_s": 750.0,
                                          "measured_s": 900.0, "ratio": 1.2, "resumed": False}]
    text = format_status(status)
    assert "| d | 1/4 | 0 | cached / not yet | 900.0 | 30 min | 25 min |" in text
    assert "probe check, d/concat finished in both runs: predicted 750 s, measured 900 s (× 1.20)" in text
    assert "counted 0 s: majority" in text


def test_a_task_the_probe_did_not_reach_has_no_estimate(tmp_path: Path, probe: Path, capsys) -> None:
    run = _run_dir(tmp_path / "run", {"d": ["gmu"], "x": ["concat", "random"]}, 20, SEEDS, 3, [])
    assert main(["timing", "status", str(run), "--probe", str(probe), "--json", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    status = json.loads((tmp_path / "s.json").read_text())
    assert status["tasks"][1]["probe"] == {"seconds": None, "trivial": ["random"], "unmatched": ["concat"]}
    assert status["probe"]["seconds_left"] is None
    assert "unknown (no probe cell for concat)" in out and "unknown (a task with neither)" in out


def test_probe_records_without_in_cell_seconds_give_no_rate(tmp_path: Path) -> None:
    """Retrieval records written before they carried phase_seconds: the evaluation time is unknown, so
    the cell gives no rate (not a rate that counts only its searches)."""
    recs = [_rec("r", "dual_encoder", 0, s, 10.0, 5, {}) for s in (1000, 1001)]
    old = _run_dir(tmp_path / "probe", {"r": ["dual_encoder"]}, 5, [1000, 1001], 1, recs)
    run = _run_dir(tmp_path / "run", {"r": ["dual_encoder"]}, 20, SEEDS, 3, [])
    with pytest.raises(UsageError, match="no finished probe cell with in-cell seconds"):
        run_status(run, [old])


def test_probes_pool_their_cells(tmp_path: Path, probe: Path, capsys) -> None:
    """Two --probe directories: the second reaches task x (3 × (20 × 1 + 5 × 2) = 90 s) and probes d/gmu
    itself (3 × (20 × 4 + 5 × 4) = 300 s), which then stands for gmu instead of d/concat."""
    recs = [_rec("x", "concat", 0, s, 5.0, 5, {"evaluation": 2.0}) for s in (1000, 1001)]
    recs += [_rec("d", "gmu", 0, s, 20.0, 5, {"evaluation": 4.0}) for s in (1000, 1001)]
    second = _run_dir(tmp_path / "probe2", {"x": ["concat"], "d": ["gmu"]}, 5, [1000, 1001], 1, recs)
    run = _run_dir(tmp_path / "run", {"d": ["gmu"], "x": ["concat", "random"]}, 20, SEEDS, 3, [])
    assert main(["timing", "status", str(run), "--probe", str(probe), "--probe", str(second),
                 "--json", str(tmp_path / "s.json")]) == 0
    status = json.loads((tmp_path / "s.json").read_text())
    assert [t["probe"]["seconds"] for t in status["tasks"]] == [300.0, 90.0]
    assert status["probe"]["seconds_left"] == 390.0 and status["probe"]["run_dirs"] == [str(probe), str(second)]
    assert "time left, each task at its measured rate or else the probe's" in capsys.readouterr().out


def test_a_cell_resumed_after_a_kill_is_left_out_of_the_mean(tmp_path: Path, probe: Path) -> None:
    """Records written before search seconds were summed over processes: a search resumed after a kill
    recorded only the last process's seconds (its killed trials show as retried): its cell time is too
    low, so the task's mean uses the cells that ran whole, and the probe check says so. Seen on the
    standard run: a resumed avmnist cell measured 2846 s."""
    whole = [_rec("d", "concat", r, s, 200.0, 20, {"evaluation": 20.0}) for r in range(3) for s in SEEDS]  # 900 s
    cut = [_rec("d", "gmu", r, s, 20.0, 20, {"evaluation": 2.0}, retried=5 if r == 0 else 0)
           for r in range(3) for s in SEEDS]  # 90 s counted
    run = _run_dir(tmp_path / "run", {"d": ["concat", "gmu", "lmf"]}, 20, SEEDS, 3, whole + cut)
    (d,) = run_status(run, [probe])["tasks"]
    assert d["cells_done"] == 2 and d["cells_resumed"] == 1
    assert d["cell_seconds_mean"] == 900.0 and d["seconds_left"] == 900.0
    only_cut = _run_dir(tmp_path / "run2", {"d": ["gmu", "lmf"]}, 20, SEEDS, 3, cut)
    status = run_status(only_cut, [probe])
    assert status["tasks"][0]["cell_seconds_mean"] == 90.0  # nothing better: kept, and flagged
    text = format_status(status)
    assert "90.0 (resumed cells without the killed process's search seconds only: too low)" in text
    assert status["probe"]["checks"] == []  # the probe has no d/gmu


def test_a_resumed_cell_whose_seconds_count_every_process_is_in_the_mean(tmp_path: Path, probe: Path) -> None:
    """Records whose `search_seconds` sum every process of the replicate (`search_seconds_complete`)
    are whole even when the search was resumed after a kill: in the mean, not flagged."""
    whole = [_rec("d", "concat", r, s, 200.0, 20, {"evaluation": 20.0}) for r in range(3) for s in SEEDS]  # 900 s
    resumed = [_rec("d", "gmu", r, s, 100.0, 20, {"evaluation": 10.0}, retried=5 if r == 0 else 0, complete=True)
               for r in range(3) for s in SEEDS]  # 450 s, every process counted
    run = _run_dir(tmp_path / "run", {"d": ["concat", "gmu", "lmf"]}, 20, SEEDS, 3, whole + resumed)
    (d,) = run_status(run, [probe])["tasks"]
    assert d["cells_done"] == 2 and d["cells_resumed"] == 0
    assert d["cell_seconds_mean"] == 675.0 and d["seconds_left"] == 675.0
    assert "left out" not in format_status(run_status(run, [probe]))


def test_trivial_baselines_neither_set_the_mean_nor_count_as_cells_left(tmp_path: Path, probe: Path) -> None:
    """A task whose finished cells are only majority/random (seconds each) must not read as nearly
    done: they are out of the mean, and without a trainable finished cell the task has no measured
    estimate (the reviewer's case: 2/22 cells, "0 min" left)."""
    trivial = [_rec("d", s, 0, seed, 0.0, 0, {"evaluation": 0.05}) for s in ("majority", "random") for seed in SEEDS]
    run = _run_dir(tmp_path / "run", {"d": ["majority", "random", "concat", "gmu"]}, 20, SEEDS, 3, trivial)
    status = run_status(run, [probe])
    (d,) = status["tasks"]
    assert d["cells_done"] == 2 and d["cell_seconds_mean"] is None and d["seconds_left"] is None
    assert d["probe"]["seconds"] == 1500.0  # concat and gmu at the probe's d/concat rates
    assert status["probe"]["checks"] == []  # no "predicted 0 s, measured 0 s" for a trivial cell


def test_fine_tuned_and_frozen_cells_do_not_stand_in_for_each_other() -> None:
    from fusebench.run.probe_estimate import CellRate, estimate_cells, stand_ins

    rates = [CellRate("concat", 1.0, 1.0), CellRate("concat+ft:last:2", 100.0, 50.0),
             CellRate("unimodal:text", 2.0, 2.0)]
    assert [r.strategy for r in stand_ins("gmu", rates)] == ["concat", "unimodal:text"]
    assert [r.strategy for r in stand_ins("gmu+ft:last:2", rates)] == ["concat+ft:last:2"]
    assert [r.strategy for r in stand_ins("unimodal:image", rates)] == ["unimodal:text"]
    assert stand_ins("unimodal:text+ft:full", rates) == []  # no probe cell in mode full
    assert estimate_cells(["gmu"], rates[:2], 20, 3, 1).seconds == 23.0  # 20 × 1 + 3 × 1
    assert estimate_cells(["majority+ft:last:2"], rates, 20, 3, 1).trivial == ["majority+ft:last:2"]
