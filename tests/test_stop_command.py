"""`fusebench stop RUN_DIR` (bench/run/stop_cli.py, bench/core/deadline.py): a running run starts no new
work, lets the work in flight end and exits 75; the same command then resumes it to the records of an
uninterrupted run. Before it, ending the standard CPU run at a session's end took a SIGTERM, which threw
away a round of trials per running study."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from fusebench.cli import main
from fusebench.core import deadline
from fusebench.run import rundir
from fusebench.search.storage import open_storage
from tests.test_stop_after import _metrics, _run_args, parallel_run, whole_run

TrialState = optuna.trial.TrialState


def test_the_stop_file_is_a_passed_deadline_inside_its_run_only(tmp_path, monkeypatch):
    monkeypatch.delenv(deadline.ENV, raising=False)
    monkeypatch.delenv(deadline.STOP_FILE_ENV, raising=False)
    stale = tmp_path / deadline.STOP_FILE
    stale.write_text("left by a run killed before it saw it\n")
    with deadline.stop_file_watched(tmp_path):
        assert not stale.exists()  # an earlier process's request does not stop this one
        assert not deadline.passed()
        deadline.check("anything")
        stale.write_text("now\n")
        assert deadline.passed()
        with pytest.raises(deadline.StopRequested, match=r"a stop was requested \(fusebench stop\) before the next cell"):
            deadline.check("the next cell")
        with deadline.stopping_at(0):  # both: the request is named
            with pytest.raises(deadline.StopRequested, match="a stop was requested"):
                deadline.check("x")
    assert not stale.exists()  # honoured: the next run of the same command resumes
    assert deadline.STOP_FILE_ENV not in os.environ
    assert not deadline.passed()


def test_stop_names_a_directory_that_is_no_run_and_a_run_that_nothing_runs(tmp_path, capsys):
    assert main(["stop", str(tmp_path)]) == 2
    assert "not a run directory (no run.json)" in capsys.readouterr().err
    (tmp_path / "run.json").write_text("{}")
    assert main(["stop", str(tmp_path)]) == 1
    assert "no process is running" in capsys.readouterr().out
    assert not (tmp_path / deadline.STOP_FILE).exists()
    with rundir.RunDirLock(tmp_path):  # a run holds it (another open file: flock conflicts in one process too)
        assert rundir.lock_holder(tmp_path) == f"pid {os.getpid()} on host {os.uname().nodename} since " \
            + (tmp_path / rundir.LOCK_NAME).read_text().split(" since ")[1].strip()
        assert main(["stop", str(tmp_path)]) == 0
        assert f"pid {os.getpid()}" in capsys.readouterr().out
        assert (tmp_path / deadline.STOP_FILE).read_text().startswith("stop requested at ")
    assert rundir.lock_holder(tmp_path) is None


def test_stop_right_after_a_run_starts_before_its_run_json(tmp_path, capsys):
    with rundir.RunDirLock(tmp_path):  # the lock comes first; run.json a moment later
        assert main(["stop", str(tmp_path)]) == 0
    assert (tmp_path / deadline.STOP_FILE).is_file()


def test_stop_names_the_run_dir_a_new_run_run_chose(tmp_path, capsys):
    out = tmp_path / "x"
    out.mkdir()
    (out / "run.json").write_text("{}")
    (tmp_path / "x.1").mkdir()
    (tmp_path / "x.backup").mkdir()  # not an OUT.N
    with rundir.RunDirLock(tmp_path / "x.1"):
        assert main(["stop", str(out)]) == 1
        assert f"a --new-run run is writing to {tmp_path / 'x.1'}: fusebench stop {tmp_path / 'x.1'}" in capsys.readouterr().out
    assert not (out / deadline.STOP_FILE).exists() and not (tmp_path / "x.1" / deadline.STOP_FILE).exists()


def test_a_new_run_run_that_stops_says_which_out_resumes_it(tmp_path, caplog):
    with pytest.raises(deadline.StopRequested), rundir.resume_hint(tmp_path / "x.1", tmp_path / "x"):
        raise deadline.StopRequested("the --stop-after deadline passed before cell d/s")
    assert f"resume it with --out {tmp_path / 'x.1'} and without --new-run" in caplog.text
    caplog.clear()
    with pytest.raises(deadline.StopRequested), rundir.resume_hint(tmp_path / "x", tmp_path / "x"):
        raise deadline.StopRequested("…")
    assert caplog.text == ""  # the same command resumes it


def test_a_stop_that_races_the_runs_end_takes_its_request_back(tmp_path, capsys, monkeypatch):
    (tmp_path / "run.json").write_text("{}")
    answers = iter(["pid 1 on host h since t", None])  # held at the check, gone after the write
    monkeypatch.setattr(rundir, "lock_holder", lambda _: next(answers))
    assert main(["stop", str(tmp_path)]) == 1
    assert "ended before the request; nothing to stop" in capsys.readouterr().out
    assert not (tmp_path / deadline.STOP_FILE).exists()  # no stale request to copy or to stop the next run


def test_a_run_dir_the_stopper_cannot_write_is_exit_2_not_a_traceback(tmp_path, capsys, monkeypatch):
    import fusebench.run.stop_cli as stop_cli

    def denied(path, data):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(stop_cli, "atomic_write_bytes", denied)
    with rundir.RunDirLock(tmp_path):
        assert main(["stop", str(tmp_path)]) == 2
    assert "cannot read its lock or write stop-requested (Permission denied)" in capsys.readouterr().err


def test_a_run_starting_while_stop_looks_at_its_lock_is_not_refused(tmp_path):
    """`lock_holder` takes a shared flock for a moment; a run starting in that moment waited for it
    (RunDirLock retries) instead of exit 2 naming the previous holder (reviewer, stop 39)."""
    import fcntl
    import threading

    (tmp_path / rundir.LOCK_NAME).write_text("pid 99999 on host gone since earlier\n")
    fd = os.open(tmp_path / rundir.LOCK_NAME, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH)
    threading.Timer(0.2, os.close, (fd,)).start()  # closing releases it
    with rundir.RunDirLock(tmp_path):
        assert f"pid {os.getpid()}" in (tmp_path / rundir.LOCK_NAME).read_text()


@pytest.mark.slow
def test_a_run_asked_to_stop_inside_a_cell_exits_75_and_resumes_to_the_uninterrupted_records(
        synthetic_bundle, monkeypatch, tmp_path, capsys):
    data = whole_run(synthetic_bundle, monkeypatch, tmp_path)
    import fusebench.run.cell as cell_module

    real = cell_module._run_cell
    stopped = tmp_path / "stopped"

    def stop_during_the_second_cell(*args, **kwargs):
        if (stopped / "results.jsonl").is_file():  # the first cell is done
            assert main(["stop", str(stopped)]) == 0  # the run holds its lock: the request is written
        return real(*args, **kwargs)

    monkeypatch.setattr(cell_module, "_run_cell", stop_during_the_second_cell)
    assert main(_run_args(data, stopped)) == deadline.EXIT_CODE
    err = capsys.readouterr().err
    assert "stopped: a stop was requested (fusebench stop) before more trials of toy/" in err
    assert not (stopped / deadline.STOP_FILE).exists()
    assert len({s for s, _ in _metrics(stopped)}) == 1  # one cell done, the other not searched
    monkeypatch.setattr(cell_module, "_run_cell", real)
    assert main(_run_args(data, stopped)) == 0  # the same command: resumes, not stopped again
    assert _metrics(stopped) == _metrics(tmp_path / "whole")


def _finished_trials(journal: Path) -> list[optuna.trial.FrozenTrial]:
    if not journal.is_file():
        return []
    storage = open_storage(f"journal:///{journal}")
    return [t for s in storage.get_all_studies() for t in storage.get_all_trials(s._study_id)]


@pytest.mark.slow
def test_stop_reaches_the_cell_processes_of_a_parallel_run_which_finish_their_trials(synthetic_bundle, tmp_path):
    """Real processes, --jobs 2: the request is seen by the spawned cell processes (they inherit
    FUSEBENCH_STOP_FILE), no trial is failed or left running, and the run exits 75 by itself."""
    out = tmp_path / "run"
    env, argv = parallel_run(synthetic_bundle, out)  # no deadline: without the stop it searches for the suite's cap
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.monotonic()
        while not any(t.state == TrialState.COMPLETE for t in _finished_trials(out / "optuna.journal")):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() - t0 < 300, "no trial finished in 300 s"
            time.sleep(2)
        asked = subprocess.run([sys.executable, "-m", "fusebench", "stop", str(out)], env=env, capture_output=True,
                               text=True, timeout=120, check=False)
        assert asked.returncode == 0, asked.stdout + asked.stderr
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == deadline.EXIT_CODE, err[-3000:]
    assert "a stop was requested (fusebench stop)" in err
    trials = _finished_trials(out / "optuna.journal")
    assert [t.number for t in trials if t.state in (TrialState.FAIL, TrialState.RUNNING)] == []
    assert not any(t.user_attrs.get("interrupted") for t in trials)
    assert not (out / deadline.STOP_FILE).exists()
    assert json.loads((out / "run.json").read_text())["phases"].get("cells", 0.0) > 0
