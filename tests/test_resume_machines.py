"""A run resumed on another machine says so: run.json's `sessions`, the leaderboard's `device` column and
per-task note, the report's metadata and the timing history's device (bench/results/provenance.py).

run.json kept the machine that started the run and nothing else: the GPU run carried from an H100 to an
H200 (reports/published/gpu-nvidia-h200, session 3) said "H100" for cells the H200 ran, and one
leaderboard put the two devices' samples/s side by side without a word."""

from __future__ import annotations

import json

import torch

from fusebench.reports.html import write_report
from fusebench.reports.leaderboard import device_note, leaderboard, to_markdown, write_leaderboard
from fusebench.results import provenance
from fusebench.results import timing_history as th
from fusebench.results.records import Record, Throughput, write_records
from tests.test_reports import _tables_of

H100, H200 = "cuda:NVIDIA H100 80GB HBM3", "cuda:NVIDIA H200"
FAMILIES = {"concat": "early", "film": "mid", "unimodal:a": "unimodal"}


def _records(devices: dict[str, str]) -> list[Record]:
    return [Record(dataset="d1", task="classification", strategy=name, family=FAMILIES[name], modalities=["a"],
                   seed=seed, status="ok", metrics={"accuracy": 0.6 + 0.01 * seed}, main_metric_name="accuracy",
                   main_metric=0.6 + 0.01 * seed, device=device,
                   throughput=Throughput(1e4, 1e5, 1e3, 0.5, 0.9, 100.0, "cuda_max_allocated", 256, 30))
            for name, device in devices.items() for seed in (1, 2, 3)]


def test_a_task_on_two_devices_says_which_rows_ran_where_and_one_device_says_nothing():
    mixed = leaderboard(_records({"concat": H200, "film": H100, "unimodal:a": H200}))
    assert dict(zip(mixed.strategy, mixed.device)) == {"concat": H200, "film": H100, "unimodal:a": H200}
    note = device_note(mixed)
    assert note.startswith("Measured on 2 devices: ")
    assert f"`{H100}` (`film`)" in note and f"`{H200}` (`concat`, `unimodal:a`)" in note
    assert f"**Devices.** {note}" in to_markdown(mixed)
    one = leaderboard(_records({"concat": H200, "film": H200, "unimodal:a": H200}))
    assert device_note(one) == "" and "**Devices.**" not in to_markdown(one)
    unrecorded = leaderboard(_records({"concat": "", "film": H200, "unimodal:a": H200}))  # an old record: no device
    assert device_note(unrecorded) == ""


def test_a_row_measured_on_several_devices_is_named_apart_as_the_fronts_count_it():
    """Note of stop 30: a joined `"A; B"` row was counted under both devices, so rows of `A` and one row
    of `A; B` read as if each device had rows of its own, while the plot drew the one front of all rows."""
    from fusebench.reports.verdicts import measured_devices

    one_and_joined = leaderboard(_records({"concat": H200, "film": f"{H100}; {H200}", "unimodal:a": H200}))
    assert len(measured_devices(one_and_joined.device)) == 1
    note = device_note(one_and_joined)
    assert note == (f"Measured on 2 devices: `{H200}` (`concat`, `unimodal:a`). "
                    f"`film` (`{H100}; {H200}`) was measured on several devices, whose samples/s mix them.")
    two_and_joined = leaderboard(_records({"concat": H200, "film": f"{H100}; {H200}", "unimodal:a": H100}))
    note = device_note(two_and_joined)
    assert note.startswith("Measured on 2 devices: ") and f"`{H100}` (`unimodal:a`)" in note
    assert f"`{H200}` (`concat`)" in note and "`film` (" in note and note.endswith("on no device's front.")
    third = leaderboard(_records({"concat": H200, "film": f"{H200}; cpu:x", "unimodal:a": H100}))
    assert device_note(third).startswith("Measured on 3 devices: ")  # the joined row's second device counts
    nothing = leaderboard(_records({"concat": H200, "film": f"{H200}; {H200}", "unimodal:a": H200}))
    assert device_note(nothing) == ""


def test_the_csv_and_the_html_report_carry_the_devices(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    records = _records({"concat": H200, "film": H100, "unimodal:a": H200})
    write_records(run / "results.jsonl", records)
    meta = {"git_sha": "abc", "config": {"suite": {"trials": 3}}, "machine": {"gpu": "NVIDIA H100 80GB HBM3",
                                                                               "cpu_model": "Xeon", "cpu_count": 16}}
    meta["sessions"] = [{"machine": meta["machine"]},
                        {"machine": {"gpu": "NVIDIA H200", "cpu_model": "Xeon", "cpu_count": 16}}]
    (run / "run.json").write_text(json.dumps(meta))
    write_leaderboard(records, run)
    csv = (run / "leaderboard.csv").read_text().splitlines()
    assert "device" in csv[0].split(",") and any(H100 in line for line in csv[1:])
    text = write_report(run).read_text()
    assert "<b>Devices.</b> Measured on 2 devices" in text
    meta_table = next(t for t in _tables_of(text) if any(row and row[0] == "machines" for row in t))
    machines = next(row[1] for row in meta_table if row[0] == "machines")
    assert machines == "NVIDIA H100 80GB HBM3 (Xeon × 16) → NVIDIA H200 (Xeon × 16)"


def test_each_process_adds_a_session_and_an_old_run_json_gets_its_first_back(monkeypatch):
    monkeypatch.setattr(provenance, "machine", lambda device: {"cpu_model": "This CPU", "cpu_count": 2, "device": "cpu"})
    cpu = torch.device("cpu")
    meta = provenance.envelope({}, cpu)
    provenance.record_session(meta, cpu, resumed=False)
    assert meta["resumed_at"] is None and len(meta["sessions"]) == 1
    provenance.record_session(meta, cpu, resumed=True)
    assert meta["resumed_at"] and len(meta["sessions"]) == 2
    assert provenance.machines(meta) == ["This CPU × 2"]  # one machine, twice
    old = {"started_at": "2026-01-01T00:00:00+00:00", "git_sha": "abc",
           "machine": {"gpu": "NVIDIA H100 80GB HBM3", "cpu_model": "Xeon", "cpu_count": 16}}
    provenance.record_session(old, cpu, resumed=True)
    assert old["sessions"][0]["started_at"] == "2026-01-01T00:00:00+00:00"
    assert provenance.machines(old) == ["NVIDIA H100 80GB HBM3 (Xeon × 16)", "This CPU × 2"]
    assert provenance.machines({"machine": {"cpu_model": "X", "cpu_count": 4}}) == ["X × 4"]  # no sessions yet


def test_the_timing_history_row_of_a_run_on_two_machines_names_both(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    h100 = {"gpu": "NVIDIA H100 80GB HBM3", "cpu_model": "Xeon", "cpu_count": 16, "device": "cuda"}
    meta = {"finished_at": "2026-01-01T00:00:00", "seconds": 10.0, "machine": h100, "identity": {"suite": "standard"},
            "phases": {"cells": 10.0}, "sessions": [{"machine": h100}, {"machine": {**h100, "gpu": "NVIDIA H200"}}]}
    (run / "run.json").write_text(json.dumps(meta))
    (run / "results.jsonl").write_text("")
    assert th.row_from_run(run)["device"] == "NVIDIA H100 80GB HBM3 (Xeon × 16) + NVIDIA H200 (Xeon × 16)"
    meta["sessions"] = [{"machine": h100}, {"machine": h100}]
    (run / "run.json").write_text(json.dumps(meta))
    assert th.row_from_run(run)["device"] == "NVIDIA H100 80GB HBM3"
