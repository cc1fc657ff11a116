"""Edges of resuming on another device (found by a review of a0f7626): seeds stored by the version before
keep matching, a missing device is no device, an odd run.json, `compare` and pareto.md name every machine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import fusebench.run.cell as cell_module
from fusebench.reports.leaderboard import device_note
from fusebench.results.provenance import machines, record_session
from fusebench.results.records import load_records
from fusebench.run import seed_store
from tests.test_resume_device import _kept
from tests.test_seed_store_resume import SEEDS, _args, stop_after_storing


def test_seeds_stored_before_the_device_was_in_the_key_are_kept_on_the_same_device(
        synthetic_bundle, tmp_path: Path, monkeypatch, caplog) -> None:
    """A run killed under the previous version and resumed under this one, on the same device: its stored
    seeds were scored there and must be kept (a token-level cell's seeds take hours each on a CPU)."""
    from fusebench.cli import main

    data, cfg = synthetic_bundle
    monkeypatch.setenv("FUSEBENCH_CONFIG_DIR", str(cfg))
    out, stored = tmp_path / "run", 2
    key = cell_module.seed_key
    save = stop_after_storing(monkeypatch, stored)
    # the previous version's key: no device in it
    monkeypatch.setattr(cell_module, "seed_key", lambda parts: key({k: v for k, v in parts.items() if k != "device"}))
    main(_args(data, out, "concat", 1))
    monkeypatch.setattr(seed_store.SeedStore, "save", save)
    monkeypatch.setattr(cell_module, "seed_key", key)

    caplog.clear()
    assert main(_args(data, out, "concat", 1, ("-v",))) == 0
    assert len([r for r in load_records(out / "results.jsonl") if r.status == "ok"]) == SEEDS
    assert _kept(caplog.messages) == stored  # a0f7626: 0, both retrained on the device that scored them


def test_device_note_leaves_out_a_missing_device_of_a_board_read_back_from_csv(tmp_path: Path) -> None:
    board = pd.DataFrame({"dataset": ["t", "t"], "strategy": ["a", "majority"], "device": ["cpu:x", ""]})
    board.to_csv(tmp_path / "b.csv", index=False)
    back = pd.read_csv(tmp_path / "b.csv")  # "" comes back as NaN
    assert device_note(back) == device_note(board) == ""  # a0f7626: "Measured on 2 devices: `cpu:x` …; `nan` …"
    assert device_note(pd.DataFrame({"strategy": ["a", "b"], "device": ["cpu:x", None]})) == ""
    assert device_note(pd.DataFrame({"strategy": ["a", "b"], "device": ["cpu:x", np.nan]})) == ""


@pytest.mark.parametrize("meta", [{"machine": "oops"}, {"sessions": [None]}, {"sessions": [{"machine": "x"}]},
                                  {"sessions": None, "machine": {"cpu_count": 2}}, {"sessions": "x"}])
def test_machines_and_record_session_survive_a_hand_edited_run_json(meta: dict) -> None:
    """`fusebench report --html`, the timing history and a resume read run.json: an odd `machine` or
    `sessions` must not crash them (a0f7626: AttributeError)."""
    assert isinstance(machines(dict(meta)), list)
    resumed = dict(meta)
    record_session(resumed, torch.device("cpu"), resumed=True)
    assert isinstance(resumed["sessions"], list) and resumed["sessions"][-1]["machine"]
    assert machines(resumed)


def test_compare_machine_note_names_a_resumed_runs_second_machine(tmp_path: Path) -> None:
    """`fusebench compare` reads run.json's `machine` (the one that started the run): a run resumed on
    another GPU was reported as made on the baseline's machine alone ("machines: the same gpu")."""
    import json

    from fusebench.reports.compare import load_machine, machine_note

    h100, h200 = {"gpu": "NVIDIA H100 80GB HBM3", "cpu_model": "Xeon"}, {"gpu": "NVIDIA H200", "cpu_model": "Xeon"}
    base, cur = tmp_path / "base", tmp_path / "cur"
    base.mkdir(), cur.mkdir()
    (base / "run.json").write_text(json.dumps({"machine": h100}))
    (cur / "run.json").write_text(json.dumps({"machine": h100, "sessions": [{"machine": h100}, {"machine": h200}]}))
    note = machine_note(load_machine(base), load_machine(cur))
    assert "NVIDIA H200" in note and not note.startswith("machines: the same")


def test_compare_reads_a_run_json_whose_sessions_field_is_not_a_list(tmp_path: Path) -> None:
    """A hand-edited run.json with an odd `sessions` value: `compare` falls back on its `machine`, as
    the report and the timing history do (one reading of `sessions`, provenance.session_machines); its own
    walk iterated the value and failed with a TypeError on a number."""
    import json

    from fusebench.reports.compare import load_machine

    run = tmp_path / "run"
    run.mkdir()
    for odd in (5, "H100", {"machine": {"gpu": "X"}}, [3, {"machine": "H100"}]):
        (run / "run.json").write_text(json.dumps({"machine": {"gpu": "NVIDIA H100 80GB HBM3"}, "sessions": odd}))
        assert load_machine(run) == {"gpu": "NVIDIA H100 80GB HBM3"}, odd


def test_pareto_section_says_its_throughputs_come_from_two_devices(tmp_path: Path) -> None:
    """The Pareto front compares samples/s across rows: on a task whose rows ran on two devices
    (tmp/s3r: film on an H100, the rest on an H200) pareto.md must say so, as the leaderboard does."""
    from fusebench.reports.pareto import write_pareto

    rows = [("film", "mid", 0.49, 7e5, "cuda:NVIDIA H100 80GB HBM3"), ("concat", "early", 0.49, 1.5e6, "cuda:NVIDIA H200"),
            ("gmu", "mid", 0.46, 5e5, "cuda:NVIDIA H200")]
    board = pd.DataFrame([{"dataset": "esc50", "strategy": s, "family": f, "metric": "accuracy", "mean": m, "status": "ok",
                           "infer_samples_per_s": t, "train_samples_per_s": 1e5, "params_count": 10, "device": d}
                          for s, f, m, t, d in rows])
    write_pareto([], board, tmp_path)
    md = (tmp_path / "pareto.md").read_text()
    assert "Devices." in md and "NVIDIA H100" in md  # a0f7626: no word of it
    one = board.assign(device="cuda:NVIDIA H200")
    write_pareto([], one, tmp_path)
    assert "Devices." not in (tmp_path / "pareto.md").read_text()
