"""Resume after kill -9, shown with real processes on the generated toy dataset.

`python -m bench.cli run ...` is started as a subprocess and killed with SIGKILL twice: first
mid-search (once the journal storage shows a finished trial and one RUNNING), then, on the re-run,
after the first cell's records are written while a later cell is searching. A third run of the
same command finishes. The result must equal an uninterrupted run of the same config: the same
(dataset, strategy, replicate, seed) records, no duplicates, every line parseable, the same n_trials; every
study has exactly its budget of COMPLETE/PRUNED trials, trials finished before a kill are kept
(not re-run), and the trials RUNNING at a kill end up FAIL (and were retried).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from fusebench.results.records import load_records
from fusebench.search.storage import open_storage
from tests.killpoint import LoggedPopen, kill_at

REPO = Path(__file__).resolve().parent.parent
TRIALS = 4
STUDIES = ("toy/concat", "toy/unimodal:lexical", "toy/unimodal:neural")


@pytest.fixture()
def toy(synthetic_bundle, monkeypatch):
    data, cfg = synthetic_bundle
    monkeypatch.setenv("FUSEBENCH_CONFIG_DIR", str(cfg))
    return data, cfg


def _args(data: Path, out: Path) -> list[str]:
    return ["run", "--datasets", "toy", "--strategies", "concat,unimodal", "--size", "small", "--trials", str(TRIALS),
            "--seeds", "2", "--epochs", "30", "--data-dir", str(data), "--out", str(out)]


def _trials(storage: optuna.storages.BaseStorage, name: str) -> list[optuna.trial.FrozenTrial]:
    try:
        return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    except KeyError:
        return []


def _run_until(args: list[str], out: Path, condition, timeout: float = 120.0) -> dict:
    """Start the CLI; SIGKILL it as soon as condition(storage) holds (checked again with the run
    frozen, tests/killpoint.py); return what was seen at the kill."""
    log = out.parent / f"{out.name}-{time.monotonic_ns()}.log"  # one per start: the output of each killed process
    proc = LoggedPopen([sys.executable, "-m", "fusebench", *args], log, cwd=REPO, env=os.environ.copy())
    journal = out / "optuna.journal"
    storage = None

    def seen():
        nonlocal storage
        if not journal.is_file():
            return None
        storage = storage or open_storage(f"journal:///{journal.resolve()}")
        return condition(storage)

    try:
        return kill_at(proc, seen, timeout, settled=lambda: not Path(f"{journal}.lock").exists())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _mid_first_search(storage):
    trials = _trials(storage, "toy/concat")
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    running = [t for t in trials if t.state == TrialState.RUNNING]
    if done and running:
        return {"running": [("toy/concat", t.number) for t in running],
                "done": {("toy/concat", t.number): t.datetime_complete for t in done}}
    return None


def _results_written_and_later_search_running(out: Path):
    def condition(storage):
        records = load_records(out / "results.jsonl")
        if not any(r.strategy == "concat" for r in records):
            return None
        for name in STUDIES[1:]:
            trials = _trials(storage, name)
            running = [t for t in trials if t.state == TrialState.RUNNING]
            done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
            if running and len(done) < TRIALS:
                return {"running": [(name, t.number) for t in running], "records": len(records),
                        "done": {(name, t.number): t.datetime_complete for t in done}}
        return None

    return condition


@pytest.mark.slow
def test_kill_9_twice_then_resume_equals_an_uninterrupted_run(toy, tmp_path):
    from fusebench.cli import main

    data, _ = toy
    started = time.perf_counter()
    ref, out = tmp_path / "ref", tmp_path / "killed"
    assert main(_args(data, ref)) == 0  # uninterrupted reference (in-process; it also warms the feature cache)
    ref_records = load_records(ref / "results.jsonl")

    t0 = time.perf_counter()
    first = _run_until(_args(data, out), out, _mid_first_search)
    print(f"\nkill 1 after {time.perf_counter() - t0:.1f}s; lock left: {list(out.glob('*lock*'))}")
    assert not (out / "results.jsonl").exists() or load_records(out / "results.jsonl") == []
    second = _run_until(_args(data, out), out, _results_written_and_later_search_running(out))
    print(f"kill 2 at +{time.perf_counter() - t0:.1f}s; lock left: {list(out.glob('*lock*'))}")
    assert second["records"] == 2  # concat's two seeds were written, then the kill hit a later search
    phases_at_kill = json.loads((out / "run.json").read_text())["phases"]
    assert phases_at_kill["encoding"] > 0 and phases_at_kill["cells"] > 0  # the killed processes' time is kept
    proc = subprocess.run([sys.executable, "-m", "fusebench", *_args(data, out)], cwd=REPO, env=os.environ.copy(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(f"final run done at +{time.perf_counter() - t0:.1f}s")

    # results.jsonl: parses fully, no duplicates, exactly the records of the uninterrupted run
    lines = (out / "results.jsonl").read_text().splitlines()
    parsed = [json.loads(line) for line in lines]
    keys = [(r["dataset"], r["strategy"], r.get("replicate", 0), r["seed"]) for r in parsed]
    assert len(keys) == len(set(keys)) == len(ref_records) == 3 * 2
    assert set(keys) == {r.key for r in ref_records}
    assert all(r["status"] == "ok" and r["stats"] for r in parsed)
    assert {(r["strategy"], r["n_trials"]) for r in parsed} == {(r.strategy, r.n_trials) for r in ref_records}
    assert {r["n_trials"] for r in parsed} == {TRIALS}
    phases = json.loads((out / "run.json").read_text())["phases"]
    assert phases["cells"] > phases_at_kill["cells"] and phases["encoding"] >= phases_at_kill["encoding"]

    storage = open_storage(f"journal:///{(out / 'optuna.journal').resolve()}")
    by_number = {name: {t.number: t for t in _trials(storage, name)} for name in STUDIES}
    for name, trials in by_number.items():
        states = [t.state for t in trials.values()]
        n_done = sum(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states)
        assert n_done == TRIALS, f"{name}: {n_done} finished trials, budget {TRIALS}"
        assert states.count(TrialState.RUNNING) == 0
        assert len(trials) == TRIALS + states.count(TrialState.FAIL)  # nothing re-run beyond the failed ones
    for name, number in first["running"] + second["running"]:
        t = by_number[name][number]
        assert t.state == TrialState.FAIL and t.user_attrs.get("stale") is True, (name, number, t.state)
    for (name, number), completed_at in {**first["done"], **second["done"]}.items():
        assert by_number[name][number].datetime_complete == completed_at  # kept, not re-run
    n_fail = sum(t.state == TrialState.FAIL for trials in by_number.values() for t in trials.values())
    print(f"\nresume: killed twice (stale trials {first['running'] + second['running']}), "
          f"{len(parsed)} records == uninterrupted {len(ref_records)}, {TRIALS} finished trials per study, "
          f"{n_fail} failed+retried; {time.perf_counter() - started:.1f}s")
