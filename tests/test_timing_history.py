"""Time to leaderboard history (issue 15): `fusebench timing record|compare` on generated run.json files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from fusebench.cli import main
from fusebench.results import timing_history as th


def _run_dir(root: Path, name: str, seconds: float, *, cpu: str = "Test CPU 9000", suite: str = "smoke",
             finished: str = "2026-01-01T00:00:00", cells: int = 3) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "run.json").write_text(json.dumps({
        "finished_at": finished, "seconds": seconds, "source_revision": "0123456789abcdef0123",
        "versions": {"fusebench": "0.1.0"},
        "machine": {"hostname": "elsewhere", "cpu_model": cpu, "cpu_count": 2, "device": "cpu"},
        "identity": {"suite": suite, "config_hash": "abc"},
        "phases": {"data": 1.0, "encoding": 2.0, "cells": seconds - 4.0, "statistics": 0.5, "leaderboard": 0.5},
        "cell_seconds": {"search": seconds / 2, "evaluation": seconds / 3},
    }))
    with (d / "results.jsonl").open("w") as f:
        for c in range(cells):
            for seed in (0, 1):
                f.write(json.dumps({"dataset": "d", "strategy": f"s{c}", "seed": seed}) + "\n")
    return d


def test_record_appends_one_row_per_run_with_every_phase(tmp_path, capsys):
    history = tmp_path / "h.csv"
    run = _run_dir(tmp_path, "a", 100.0)
    for _ in range(2):  # recording the same run twice adds it once
        assert main(["timing", "record", str(run), "--history", str(history)]) == 0
    rows = list(csv.DictReader(history.open()))
    assert len(rows) == 1
    row = rows[0]
    assert (row["cpu"], row["cores"], row["device"], row["suite"], row["cells"]) == ("Test CPU 9000", "2", "cpu", "smoke", "3")
    assert (row["total_s"], row["cells_s"], row["cell_search_s"], row["report_s"]) == ("100.0", "96.0", "50.0", "")
    assert row["revision"] == "0123456789ab" and row["fusebench"] == "0.1.0"


def test_compare_flags_a_slowdown_against_the_same_machine_and_suite_only(tmp_path, capsys):
    history = tmp_path / "h.csv"
    for i, secs in enumerate((100.0, 110.0, 90.0)):
        th.append_row(history, th.row_from_run(_run_dir(tmp_path, f"r{i}", secs, finished=f"2026-01-0{i + 1}T00:00:00")))
    th.append_row(history, th.row_from_run(_run_dir(tmp_path, "other-cpu", 10.0, cpu="Fast CPU", finished="2026-01-05T00:00:00")))
    th.append_row(history, th.row_from_run(_run_dir(tmp_path, "other-suite", 10.0, suite="tiny", finished="2026-01-06T00:00:00")))
    slow = _run_dir(tmp_path, "slow", 160.0, finished="2026-02-01T00:00:00")
    assert main(["timing", "compare", str(slow), "--history", str(history)]) == 0  # a warning, not a failure
    out = capsys.readouterr().out
    assert "SLOWDOWN: 1.60× the median 100.0 s of the last 3 row(s)" in out
    assert main(["timing", "compare", str(slow), "--history", str(history), "--fail"]) == 1
    capsys.readouterr()
    fine = _run_dir(tmp_path, "fine", 140.0, finished="2026-02-02T00:00:00")
    assert main(["timing", "compare", str(fine), "--history", str(history), "--fail"]) == 0
    assert "1.40× the median 100.0 s" in capsys.readouterr().out
    result = th.compare(th.row_from_run(slow), th.read_history(history), factor=1.5, last=2)
    assert result.median_s == pytest.approx(100.0) and len(result.peers) == 2  # the last two rows: 110 and 90


def test_compare_without_history_says_so(tmp_path, capsys):
    run = _run_dir(tmp_path, "a", 50.0)
    assert main(["timing", "compare", str(run), "--history", str(tmp_path / "none.csv")]) == 0
    assert "no earlier row of this machine and suite" in capsys.readouterr().out


def test_bad_inputs_exit_2_naming_the_file(tmp_path, capsys):
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "run.json").write_text(json.dumps({"started_at": "x"}))
    assert main(["timing", "record", str(unfinished), "--history", str(tmp_path / "h.csv")]) == 2
    assert "run.json: field 'seconds' or 'phases' missing" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    assert main(["timing", "compare", str(_run_dir(tmp_path, "r", 5.0)), "--history", str(bad)]) == 2
    assert "bad.csv: not a time-to-leaderboard history" in capsys.readouterr().err


def test_committed_history_is_well_formed():
    """The committed file parses, has the documented header and only real (finished, positive) rows."""
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "time_to_leaderboard.csv"
    with path.open() as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == th.COLUMNS
        rows = list(reader)
    assert rows and all(float(r["total_s"]) > 0 and r["cpu"] and r["suite"] and r["revision"] for r in rows)


def test_ci_prints_the_comparison_as_a_warning():
    ci = (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text()
    line = next(x for x in ci.splitlines() if "fusebench timing compare" in x)
    assert "runs/ci-smoke" in line and "benchmarks/time_to_leaderboard.csv" in line and "--fail" not in line
