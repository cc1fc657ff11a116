"""RUNNING trials that another host started, on a journal (a run directory copied here after its
process was killed, or a journal shared over a network file system): no pid can be checked, so a trial
is stale once its owner's search clock and its reports have not moved for `FOREIGN_GRACE_S` of watching.

Before, such a trial counted as running for ever: the resumed search ran the rest of its budget and then
waited for it, silently and for good, and `fusebench forget` refused the cell with no way out."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from fusebench.core.errors import UsageError
from fusebench.run.forget import forget_cells
from fusebench.search import stale
from fusebench.search.clock import KEY_PREFIX, TRIAL_CLOCK_ATTR
from fusebench.search.storage import default_url, open_storage
from fusebench.search.study import Budget, open_study, run_search

KEY = "machine-a:4242:abcd1234"


@pytest.fixture
def grace(monkeypatch) -> float:
    monkeypatch.setattr(stale, "FOREIGN_GRACE_S", 0.6)
    monkeypatch.setattr(stale, "_watched", {})
    return 0.6


@pytest.fixture
def alarm():
    """A hang fails the test instead of hanging the suite (the bug this file is about)."""
    def fire(*_):
        raise TimeoutError("the search waited for a trial of another host")

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def _foreign_trial(study: optuna.Study, clock_s: float | None = 12.0, key: str = KEY) -> optuna.Trial:
    trial = study.ask()
    host, pid, _ = key.split(":")
    trial.set_user_attr("host", host)
    trial.set_user_attr("pid", int(pid))
    trial.set_user_attr(TRIAL_CLOCK_ATTR, key)
    if clock_s is not None:
        study.set_user_attr(KEY_PREFIX + key, clock_s)
    return trial


def test_a_killed_run_resumed_on_another_machine_takes_the_dead_hosts_trial_over(tmp_path: Path, grace, alarm,
                                                                                caplog) -> None:
    url = f"journal:///{tmp_path}/optuna.journal"
    _foreign_trial(open_study("t/concat", open_storage(url), 0))
    study = open_study("t/concat", open_storage(url), 0)
    run_search(study, lambda tr: tr.suggest_float("x", 0, 1), Budget(trials=3, timeout_s=60, seeds=1), poll_s=0.05)
    states = [t.state for t in study.get_trials()]
    assert states.count(TrialState.COMPLETE) == 3 and states[0] == TrialState.FAIL
    assert study.trials[0].user_attrs.get("stale") is True
    said = caplog.text
    assert "trial 0 is RUNNING for host machine-a (pid 4242), which this machine cannot check" in said
    assert "1 trial(s) left running by a killed process marked failed" in said


def test_a_trial_whose_owner_on_another_host_works_is_live(tmp_path: Path, grace) -> None:
    study = open_study("t/gmu", open_storage(f"journal:///{tmp_path}/optuna.journal"), 0)
    trial = _foreign_trial(study)
    assert stale.live_running(study) == [0]  # first seen: not judged yet
    for step in range(4):  # the owner saves its clock and reports epochs: it stays live past the grace
        time.sleep(grace * 0.5)
        study.set_user_attr(KEY_PREFIX + KEY, 12.0 + step)
        if step % 2:
            trial.report(0.5, step)
        assert stale.live_running(study) == [0], step
    time.sleep(grace * 1.2)  # then it stops moving: a killed process
    assert stale.live_running(study) == []
    assert stale.fail_stale_running(study) == 1
    assert study.trials[0].state == TrialState.FAIL


def test_a_trial_of_another_host_without_a_clock_is_judged_by_its_reports(tmp_path: Path, grace) -> None:
    study = open_study("t/lmf", open_storage(f"journal:///{tmp_path}/optuna.journal"), 0)
    _foreign_trial(study, clock_s=None)
    assert stale.live_running(study) == [0]
    time.sleep(grace * 1.2)
    assert stale.live_running(study) == []


def _run_with_foreign_trial(out: Path) -> optuna.Study:
    out.mkdir()
    (out / "results.jsonl").write_text(json.dumps({"dataset": "esc50", "strategy": "concat", "seed": 0}) + "\n")
    study = open_study("esc50/concat", open_storage(default_url(out), heartbeat=False), 0)
    _foreign_trial(study)
    return study


def test_forget_watches_another_hosts_trial_and_forgets_a_dead_ones_cell(tmp_path: Path, grace, caplog) -> None:
    out = tmp_path / "run"
    _run_with_foreign_trial(out)
    t0 = time.monotonic()
    done = forget_cells(out, ["esc50/concat"], default_url(out))
    assert [f.cell for f in done] == ["esc50/concat"] and time.monotonic() - t0 >= grace
    assert open_storage(default_url(out), heartbeat=False).get_all_studies() == []
    assert "RUNNING for host machine-a" in caplog.text


def test_forget_refuses_while_another_hosts_owner_still_works(tmp_path: Path, grace) -> None:
    out = tmp_path / "run"
    study = _run_with_foreign_trial(out)
    stop = threading.Event()

    def work() -> None:  # the owner on machine-a saves its clock while it trains
        n = 0
        while not stop.is_set():
            n += 1
            study.set_user_attr(KEY_PREFIX + KEY, 12.0 + n)
            time.sleep(grace / 4)

    owner = threading.Thread(target=work)
    owner.start()
    try:
        with pytest.raises(UsageError, match=r"esc50/concat: trial\(s\) 0\).*another host's trial on a journal"):
            forget_cells(out, ["esc50/concat"], default_url(out))
    finally:
        stop.set()
        owner.join()
    assert [s.study_name for s in open_storage(default_url(out), heartbeat=False).get_all_studies()] == ["esc50/concat"]


def test_same_named_studies_of_two_journals_are_watched_apart(tmp_path: Path, grace) -> None:
    """Review of stop 31: the watch was keyed by (study name, trial number), so a trial of a second journal
    with the same study name and number (another run directory: `fusebench forget` on two runs, a test
    session) inherited the first one's watch, and was judged stale at first sight."""
    first = open_study("t/concat", open_storage(f"journal:///{tmp_path}/a.journal"), 0)
    second = open_study("t/concat", open_storage(f"journal:///{tmp_path}/b.journal"), 0)
    _foreign_trial(first)
    _foreign_trial(second, key="machine-b:777:ffff0000")  # another owner, whose clock shows the same 12 s
    assert stale.live_running(first) == [0]
    time.sleep(grace * 1.2)
    assert stale.live_running(first) == []  # watched idle for the grace
    assert stale.live_running(second) == [0], "first seen now: not judged yet"
    assert stale.fail_stale_running(first) == 1 and stale.fail_stale_running(second) == 0


def test_the_watch_of_a_finished_trial_is_dropped(tmp_path: Path, grace) -> None:
    study = open_study("t/concat", open_storage(f"journal:///{tmp_path}/optuna.journal"), 0)
    trial = _foreign_trial(study)
    assert stale.live_running(study) == [0] and len(stale._watched) == 1
    study.tell(trial, 0.5)  # its owner finished it
    assert stale.live_running(study) == [] and stale._watched == {}


def test_the_watches_of_a_study_no_longer_looked_at_are_dropped(tmp_path: Path, grace, monkeypatch) -> None:
    """Review of stop 32: watches were dropped only when their own study was looked at again, so a
    long-lived process (a worker, a notebook) kept those of every study it had left."""
    monkeypatch.setattr(stale, "WATCH_IDLE_S", 0.3)
    left = open_study("t/left", open_storage(f"journal:///{tmp_path}/a.journal"), 0)
    current = open_study("t/current", open_storage(f"journal:///{tmp_path}/b.journal"), 0)
    _foreign_trial(left)
    _foreign_trial(current, key="machine-b:777:ffff0000")
    assert stale.live_running(left) == [0] and len(stale._watched) == 1
    time.sleep(0.4)
    assert stale.live_running(current) == [0]
    assert [k[0] for k in stale._watched] == [str((tmp_path / "b.journal").resolve())]
