"""`fusebench timing status`: cells done per task, phases so far and the time left, from a run
directory alone (bench/run/status.py), on a real toy run and on hand-made records."""

from __future__ import annotations

import dataclasses
import json

import optuna
import pandas as pd
import pytest

from fusebench.cli import main
from fusebench.results.records import Record, load_records, write_records
from fusebench.run.cell import STUDY_ATTR
from fusebench.run.status import format_status, run_status
from fusebench.search.storage import default_url, open_storage


@pytest.fixture()
def toy(synthetic_bundle, monkeypatch):
    data, cfg = synthetic_bundle
    monkeypatch.setenv("FUSEBENCH_CONFIG_DIR", str(cfg))
    return data, cfg


def test_status_of_a_finished_toy_run(toy, tmp_path, capsys, monkeypatch):
    data, _ = toy
    # a cold cache of its own: with the session's cache warmed by an earlier toy run, every view is
    # a cache hit, its rate None, and the rates below would go unchecked (a verdict set by test order)
    monkeypatch.setenv("FUSEBENCH_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    assert main(["run", "--suite", "toy", "--data-dir", str(data), "--out", str(out), "-q"]) == 0
    capsys.readouterr()
    assert main(["timing", "status", str(out), "--json", str(tmp_path / "s.json")]) == 0
    text = capsys.readouterr().out
    status = json.loads((tmp_path / "s.json").read_text())
    planned = json.loads((out / "run.json").read_text())["plan"]["toy"]
    assert status["cells_planned"] == status["cells_done"] == len(planned) >= 3
    assert status["seconds_left"] == 0.0
    task = status["tasks"][0]
    assert task["cell_seconds_mean"] > 0 and task["prepare_seconds"] > 0
    assert {v: r["items"] for v, r in task["encode_items_per_s"].items()} == {"lexical": 98, "neural": 98}
    assert all(r["items_per_s"] > 0 for r in task["encode_items_per_s"].values())
    assert {"encoding", "cells", "leaderboard"} <= set(status["phases"])
    assert "| toy | " in text and "| done |" in text


def test_a_resumed_run_is_not_finished_until_it_finishes(toy, tmp_path, capsys):
    """run.json's finished_at of --prepare-only (or of an earlier finish) is cleared when the run goes
    on: here the sweep that follows stops on an error mid-dataset, and its status must not say
    "finished". Before, the sweep kept the prepare step's finish time (seen on the standard run)."""
    data, _ = toy
    out = tmp_path / "run"
    base = ["run", "--suite", "toy", "--strategies", "majority,concat", "--seeds", "1", "--trials", "1",
            "--data-dir", str(data), "--out", str(out), "-q"]
    assert main([*base, "--prepare-only"]) == 0
    assert json.loads((out / "run.json").read_text())["finished_at"]
    study = optuna.load_study(study_name="toy/concat", storage=open_storage(default_url(out)))
    study.set_user_attr(STUDY_ATTR, {"data_fingerprint": "another-revision"})  # the sweep refuses it (exit 2)
    assert main(base) == 2
    meta = json.loads((out / "run.json").read_text())
    assert meta["resumed_at"] and "finished_at" not in meta
    capsys.readouterr()
    assert main(["timing", "status", str(out)]) == 0
    assert "finished not yet" in capsys.readouterr().out


def test_a_resumed_run_keeps_the_encode_rates_an_earlier_process_measured(toy, tmp_path, monkeypatch):
    """The sweep after --prepare-only (or any resume) finds every view cached; the encode rates the
    prepare step measured must stay in run.json, not turn into "cached". Before, the standard run's
    resumed sweep wiped the rates of 5 tasks' encodes (hours of measurement) from its run.json."""
    data, _ = toy
    monkeypatch.setenv("FUSEBENCH_CACHE", str(tmp_path / "cache"))  # cold: the prepare step encodes
    out = tmp_path / "run"
    base = ["run", "--suite", "toy", "--strategies", "majority", "--seeds", "1", "--data-dir", str(data),
            "--out", str(out), "-q"]
    assert main([*base, "--prepare-only"]) == 0
    measured = json.loads((out / "run.json").read_text())["data"]["toy"]["encode_items_per_s"]
    assert all(r["items_per_s"] > 0 for r in measured.values()) and len(measured) == 2
    assert main(base) == 0  # every view a cache hit now
    assert json.loads((out / "run.json").read_text())["data"]["toy"]["encode_items_per_s"] == measured


def _rec(strategy: str, replicate: int, seed: int, search_s: float, eval_s: float, status: str = "ok") -> Record:
    return Record(dataset="d", task="classification", strategy=strategy, family="early", modalities=["a"],
                  seed=seed, status=status, replicate=replicate, search_seconds=search_s,
                  phase_seconds={"evaluation": eval_s}, sampler={"name": "TPESampler"})  # a cell that searched


def test_time_left_is_remaining_cells_times_the_mean_finished_cell(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    meta = {"config": {"suite": {"name": "s", "replicates": 2, "seeds": 2}}, "phases": {"encoding": 5.0},
            "plan": {"d": ["a", "b", "c", "e"], "other": ["a"]}}
    (out / "run.json").write_text(json.dumps(meta))
    recs = [_rec("a", r, s, 100.0, 10.0) for r in (0, 1) for s in (1000, 1001)]  # 2 searches + 4 evals = 240 s
    recs += [_rec("b", r, s, 50.0, 5.0) for r in (0, 1) for s in (1000, 1001)]  # 120 s
    recs += [_rec("c", 0, 1000, 1.0, 1.0)]  # one seed of four: not done
    recs += [Record(dataset="d", task="classification", strategy="e", family="early", modalities=["a"], seed=None,
                    status="failed", error="boom")]
    write_records(out / "results.jsonl", recs)
    status = run_status(out)
    d, other = status["tasks"]
    assert (d["cells_done"], d["cells_planned"], d["cells_failed"]) == (2, 4, 1)
    assert d["cell_seconds_mean"] == 180.0 and d["seconds_left"] == 360.0
    assert other["seconds_left"] is None and status["seconds_left"] is None  # no finished cell: no estimate
    # the total names the task without one and says it exceeds the others' estimate; no guess for it
    assert (status["seconds_left_at_least"], status["tasks_unestimated"]) == (360.0, ["other"])
    assert ("time left at the measured rates (one process): more than 6 min, the estimate of the tasks that have one; "
            "other not counted (no finished cell yet)") in format_status(status)
    del meta["plan"]["d"]  # no task with an estimate: unknown, as before
    (out / "run.json").write_text(json.dumps(meta))
    assert "(one process): unknown (no finished cell yet)" in format_status(run_status(out))


def test_a_directory_without_run_json_is_a_usage_error(tmp_path, capsys):
    assert main(["timing", "status", str(tmp_path)]) == 2
    assert "no run.json" in capsys.readouterr().err


@pytest.mark.parametrize("protocol", [True, False], ids=["run.json-protocol", "suite-settings-only"])
def test_a_cell_is_done_exactly_when_the_runner_would_skip_it(tmp_path, protocol):
    """R × K records are not enough: status counts a cell done only with every (replicate, seed)
    pair the runner wants (`done_cells`, the runner's resume test), so "done" means the same in both."""
    from fusebench.results.records import done_cells, load_records

    out = tmp_path / "run"
    out.mkdir()
    meta = {"config": {"suite": {"name": "s", "replicates": 2, "seeds": 2}}, "plan": {"d": ["exact", "dup", "stray"]}}
    if protocol:  # what the runner writes: the seeds and replicates it compares against
        meta["protocol"] = {"eval_seeds": [1000, 1001], "replicates": 2}
    (out / "run.json").write_text(json.dumps(meta))
    pairs = {"exact": [(0, 1000), (0, 1001), (1, 1000), (1, 1001)],
             "dup": [(0, 1000), (0, 1000), (0, 1001), (1, 1000)],  # (0, 1000) twice, (1, 1001) missing
             "stray": [(0, 1000), (0, 1001), (1, 1000), (2, 1001)]}  # four pairs, one of a replicate the run has not
    write_records(out / "results.jsonl", [_rec(s, r, seed, 1.0, 1.0) for s, ps in pairs.items() for r, seed in ps])
    assert len(load_records(out / "results.jsonl")) == 12  # R × K = 4 records for each cell
    task = run_status(out)["tasks"][0]
    assert (task["cells_done"], task["cells_planned"]) == (1, 3)
    runner_done = done_cells(load_records(out / "results.jsonl"), [1000, 1001], 2)
    assert runner_done == {("d", "exact")} and task["cells_done"] == len(runner_done)
    assert task["cell_seconds_mean"] == 6.0  # the exact cell's 2 searches + 4 evaluations, nothing of the others


def test_a_trivial_baseline_is_done_after_one_run_whatever_r_is(toy, tmp_path, capsys):
    """majority/random do not search: they run once, as replicate 0. With R = 2 the runner's own
    done-test used to want replicates 0 and 1 from them, so they ran again on every resume and
    `timing status` never counted them (the standard suite, R = 3, would have stopped at 97/107)."""
    data, _ = toy
    out = tmp_path / "run"
    argv = ["run", "--suite", "toy", "--strategies", "majority,unimodal:lexical", "--replicates", "2",
            "--data-dir", str(data), "--out", str(out), "-q"]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv) == 0
    assert "0 cell(s) ok, 0 failed, 2 already done" in capsys.readouterr().out
    assert main(["timing", "status", str(out), "--json", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["cells_done"] == 2


def test_a_resume_that_needs_fewer_views_keeps_the_others_rates_and_encoders(toy, tmp_path, monkeypatch):
    """Only the unfinished cells' views are built on resume; run.json must keep what the earlier
    process recorded for the other views (the reviewer's case: lexical's rate and encoder vanished)."""
    data, _ = toy
    monkeypatch.setenv("FUSEBENCH_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    argv = ["run", "--suite", "toy", "--strategies", "unimodal:lexical,unimodal:neural", "--seeds", "1",
            "--trials", "1", "--data-dir", str(data), "--out", str(out), "-q"]
    assert main(argv) == 0
    first = json.loads((out / "run.json").read_text())["data"]["toy"]
    assert set(first["encode_items_per_s"]) == set(first["encoders"]) == {"lexical", "neural"}
    records = [r for r in load_records(out / "results.jsonl") if r.strategy != "unimodal:neural"]
    write_records(out / "results.jsonl", records)  # neural's cell is redone, lexical's is not
    assert main(argv) == 0
    again = json.loads((out / "run.json").read_text())["data"]["toy"]
    assert again["encoders"] == first["encoders"]
    assert again["encode_items_per_s"]["lexical"] == first["encode_items_per_s"]["lexical"]


def test_cells_in_progress_show_their_trials_and_stored_seeds(tmp_path, capsys):
    """A cell begun but not finished (a ~10 h token-level cell on this CPU) shows how far it got: trials
    spent per search replicate (the run's journal, read without writing) and evaluation seeds stored."""
    from fusebench.run.seed_store import SeedStore

    out = tmp_path / "run"
    out.mkdir()
    meta = {"config": {"suite": {"name": "s", "replicates": 2, "seeds": 2, "trials": 3}},
            "plan": {"d": ["searching", "evaluating", "untouched", "majority"]}}
    (out / "run.json").write_text(json.dumps(meta))
    storage = open_storage(default_url(out))
    for name, n in (("d/searching", 2), ("d/evaluating", 3), ("d/evaluating/r1", 3)):
        study = optuna.create_study(study_name=name, storage=storage)
        for _ in range(n):
            study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    optuna.load_study(study_name="d/searching", storage=storage).ask()  # a trial running
    SeedStore(out, "d", "evaluating").save(0, 1000, "k", _rec("evaluating", 0, 1000, 1.0, 1.0),
                                           pd.DataFrame({"seed": [1000]}))
    journal = (out / "optuna.journal").read_bytes()
    status = run_status(out)
    assert (out / "optuna.journal").read_bytes() == journal  # read only
    assert status["in_progress"] == [
        {"dataset": "d", "strategy": "searching", "trials_spent": [2, 0], "trials_begun": [3, 0], "trials_budget": 3,
         "seeds_stored": 0, "seeds_wanted": 4},
        {"dataset": "d", "strategy": "evaluating", "trials_spent": [3, 3], "trials_begun": [3, 3], "trials_budget": 3,
         "seeds_stored": 1, "seeds_wanted": 4}]
    assert main(["timing", "status", str(out)]) == 0
    text = capsys.readouterr().out
    assert "- d/evaluating: search 3/3, 3/3 trials; 1/4 evaluation seeds stored" in text
    assert ("- d/searching: search 2/3, 0/3 trials (1 more begun, not counted: running, killed and retried, "
            "or stopped by the cap); 0/4") in text
    assert "untouched" not in text.split("in progress:")[1]

    (out / "optuna.journal").unlink()  # studies elsewhere (SQLite, PostgreSQL): trials unknown, seeds still shown
    assert run_status(out)["in_progress"] == [
        {"dataset": "d", "strategy": "evaluating", "trials_spent": None, "trials_begun": None, "trials_budget": 3,
         "seeds_stored": 1, "seeds_wanted": 4}]


def test_cells_left_are_timed_at_the_mean_of_their_input_kind(tmp_path):
    """Run 3's status put ESC-50's 19 cells left at the mean of two token cells and one pooled cell:
    36 h, where the probes said 2.3 h. Each cell left now takes its own kind's mean."""
    out = tmp_path / "run"
    out.mkdir()
    plan = ["coattention", "mult", "concat", "gmu", "film", "unimodal:audio_mel", "mbt"]
    meta = {"config": {"suite": {"name": "s", "replicates": 1, "seeds": 1}}, "plan": {"d": plan}}
    (out / "run.json").write_text(json.dumps(meta))
    recs = [_rec("coattention", 0, 1000, 900.0, 100.0), _rec("mult", 0, 1000, 1900.0, 100.0),  # tokens: 1000, 2000
            _rec("concat", 0, 1000, 90.0, 10.0)]  # pooled: 100
    write_records(out / "results.jsonl", recs)
    d = run_status(out)["tasks"][0]
    assert d["cell_seconds_mean"] == pytest.approx(3100 / 3, abs=0.1)
    assert d["cell_seconds_by_kind"] == {"tokens": 1500.0, "pooled": 100.0}
    # gmu, film, unimodal:audio_mel at 100 s, mbt at 1500 s; before: 4 × 1033.3 = 4133.3 s
    assert d["seconds_left"] == 3 * 100.0 + 1500.0
    assert "(pooled 100.0, tokens 1500.0)" in format_status(run_status(out))


def test_a_kind_a_task_has_not_finished_is_timed_by_the_kind_ratio_of_the_tasks_that_have(tmp_path):
    """Stop 39: the standard run's Flickr8k ITM had finished two token cells, and its 16 pooled cells
    left were put at the token mean (44 h), where ESC-50's pooled cells took 0.11 of its token cells'."""
    out = tmp_path / "run"
    out.mkdir()
    plan = {"a": ["coattention", "concat", "gmu"], "b": ["coattention", "mult", "concat"],
            "c": ["mult", "concat", "gmu", "film"], "only": ["concat", "gmu"]}
    meta = {"config": {"suite": {"name": "s", "replicates": 1, "seeds": 1}}, "plan": plan}
    (out / "run.json").write_text(json.dumps(meta))

    def rec(ds: str, strategy: str, seconds: float) -> Record:
        return dataclasses.replace(_rec(strategy, 0, 1000, seconds, 0.0), dataset=ds)

    recs = [rec("a", "coattention", 1000.0), rec("a", "concat", 100.0),  # pooled/tokens 0.1
            rec("b", "coattention", 2000.0), rec("b", "mult", 2000.0), rec("b", "concat", 800.0),  # 0.4
            rec("c", "mult", 3000.0),  # tokens only: its pooled cells at 3000 × geomean(0.1, 0.4) = 3000 × 0.2
            rec("only", "concat", 50.0)]  # pooled only: nothing left of another kind
    write_records(out / "results.jsonl", recs)
    status = run_status(out)
    a, _, c, only = status["tasks"]
    assert a["seconds_left"] == 100.0 and a["kinds_scaled"] is None  # gmu at a's own pooled mean
    assert c["seconds_left"] == pytest.approx(3 * 3000 * 0.2)
    assert c["kinds_scaled"] == {"pooled": "tokens × 0.2, the pooled/tokens ratio of a, b"}
    assert only["seconds_left"] == 50.0
    assert "(pooled left at tokens × 0.2, the pooled/tokens ratio of a, b)" in format_status(status)
    # no task with both kinds: the mean of all, as before
    del plan["a"], plan["b"]
    (out / "run.json").write_text(json.dumps(meta))
    assert run_status(out)["tasks"][0]["seconds_left"] == 3 * 3000.0
