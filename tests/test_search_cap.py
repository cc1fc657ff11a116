"""The wall-clock cap of a search replicate (issue 14 leftovers, found on the standard run).

1. A batched round whose trials cannot share a shape trains them one after another; the cap must stop
   the round's trials that have not started (before, the cap was checked between rounds only, and
   avmnist `coattention`'s first round ran ~3 h against a 30-minute cap).
2. The cap and the record's `search_seconds` count every process of a replicate: a search resumed
   after a kill no longer gets a fresh cap, nor records only its last process's seconds.

Real optuna studies (journal files) and real training; seconds come from a fake clock that only
training advances, so the tests neither sleep nor depend on the machine's load.
"""

from __future__ import annotations

import datetime

import optuna
import pytest
from optuna.trial import TrialState

import fusebench.search.clock as clock_module
from fusebench.search.clock import BEFORE_KEY, KEY_PREFIX, PARTIAL_KEY, search_time
from fusebench.search.storage import open_storage
from fusebench.search.study import Budget, open_study, run_search, trial_counts
from fusebench.search.trial_batch import BatchObjective, NotStarted, run_batched_search
from tests.killed_search import search_script, trained_past_commit
from tests.killpoint import LoggedPopen, kill_at
from tests.test_budget import FakeClock


@pytest.fixture()
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(clock_module, "time", fake)
    return fake


def test_a_round_of_trials_that_cannot_batch_stops_at_the_cap(tmp_path, synthetic_bundle, monkeypatch, clock):
    """A real `fusebench run` of the toy concat cell, 3 trials asked as one round; they differ in
    hidden_dim, so they train one after another, each taking 10 (fake) seconds against a 5 s cap.
    The first trial trains to its end (as under optuna's own timeout); the other two never start:
    FAIL `not_started`, not counted as spent, failed or retried, and the record is cap bound.
    Before the fix all three trained (3 spent trials, not cap bound)."""
    import fusebench.run.trials as trials_module
    from fusebench.cli import main
    from fusebench.results.records import load_records

    real_train = trials_module.train_model
    trained: list[int] = []

    def ten_seconds(*args, **kwargs):
        trained.append(1)
        clock.sleep(10.0)
        return real_train(*args, **kwargs)

    monkeypatch.setattr(trials_module, "train_model", ten_seconds)
    data, cfg = synthetic_bundle
    (cfg / "suites" / "capped.yaml").write_text(
        "name: capped\ndescription: a tiny cap\ndatasets: [toy]\nstrategies: [concat]\nsize: small\n"
        "trials: 3\nseeds: 1\nepochs: 3\npatience: 2\npatience_steps: 0\nmin_steps: 12\nbatch_size: 16\n"
        "timeout_s: 5\ntrial_batch: 3\n")
    monkeypatch.setenv("FUSEBENCH_CONFIG_DIR", str(cfg))
    out = tmp_path / "run"
    assert main(["run", "--suite", "capped", "--data-dir", str(data), "--out", str(out), "-q"]) == 0
    study = optuna.load_study(study_name="toy/concat", storage=open_storage(f"journal:///{out / 'optuna.journal'}"))
    trials = sorted(study.trials, key=lambda t: t.number)
    assert len(trained) == 1 and len(trials) == 3, "one round of 3; only its first trial trains"
    assert trials[0].state in (TrialState.COMPLETE, TrialState.PRUNED)
    for t in trials[1:]:
        assert t.state == TrialState.FAIL and t.user_attrs["not_started"] is True and "seed" not in t.user_attrs
        assert "cap" in t.user_attrs["fail_reason"]
    counts = trial_counts(study, 3)
    assert (counts.spent, counts.failed, counts.retried) == (1, 0, 0)
    (record,) = load_records(out / "results.jsonl")
    assert record.cap_bound is True and record.n_trials == 1 and record.n_trials_failed == 0
    assert record.search_seconds == pytest.approx(10.0) and record.search_seconds_complete is True
    import json

    assert record.search_clock == "cpu"  # a CPU run: the cap counts CPU seconds (bench/search/clock.py)
    assert json.loads((out / "run.json").read_text())["protocol"]["search_cap_clock"] == "cpu"


def _per_trial_seconds(clock: FakeClock):
    """Trial n takes 5 + n fake seconds (unequal, so that no two ways of counting agree by chance)."""
    def objective(trial: optuna.Trial) -> float:
        clock.sleep(5.0 + trial.number)
        return trial.suggest_float("x", 0.0, 1.0)

    return objective


def _batched(clock: FakeClock) -> BatchObjective:
    """Rounds whose trials train one after another (as trials that cannot share a shape do)."""
    seq = _per_trial_seconds(clock)

    def train(trials: list[optuna.Trial], xs: list[float], may_start) -> list:
        return [seq(t) if may_start() else NotStarted() for t in trials]

    return BatchObjective(lambda t: None, train)


def _search(path: str, study: optuna.Study, budget: Budget, clock: FakeClock) -> optuna.Study:
    if path == "sequential":
        return run_search(study, _per_trial_seconds(clock), budget)[0]
    return run_batched_search(study, _batched(clock), budget, 2)[0]


@pytest.mark.parametrize("path", ["sequential", "batched"])
def test_a_resumed_search_has_what_the_killed_one_left_of_the_cap(tmp_path, clock, path):
    """Process 1 runs trials 0-2 (5+6+7 = 18 s) and is killed with trial 3 RUNNING (left without
    host/pid: stale). Process 2 resumes under a 30 s cap: 12 s left, so it runs the retried trial
    (#4, 9 s → 27 s) and one more (#5, 10 s → 37 s), then stops. The record's seconds are 37, both
    processes'. Before the fix process 2 had a fresh 30 s cap (trials #4-#6: 6 spent in all) and
    recorded only its own 30 s."""
    url = f"journal:///{tmp_path / 'optuna.journal'}"
    first = _search(path, open_study("t/r", open_storage(url), 0), Budget(trials=3, timeout_s=1000, seeds=1), clock)
    assert trial_counts(first, 3).spent == 3 and search_time(first).seconds == pytest.approx(18.0)
    first.ask()  # the trial the killed process was training: RUNNING, no host/pid → stale on resume
    clock.sleep(3600.0)  # the machine was down for an hour: not search time

    study = _search(path, open_study("t/r", open_storage(url), 0), Budget(trials=10, timeout_s=30, seeds=1), clock)
    counts = trial_counts(study, 10)
    assert (counts.spent, counts.retried) == (5, 1)  # cap bound: 5 of 10
    spent = search_time(study)
    assert spent.seconds == pytest.approx(18.0 + 9.0 + 10.0) and spent.complete
    assert len([k for k in study.user_attrs if k.startswith(KEY_PREFIX)]) == 2  # one per process

    # a third process finds the cap spent: it starts nothing, and the total stays
    again = _search(path, open_study("t/r", open_storage(url), 0), Budget(trials=10, timeout_s=30, seeds=1), clock)
    assert len(again.trials) == len(study.trials) and search_time(again).seconds == pytest.approx(37.0)


def _old_trial(number: int, start_s: float, end_s: float, **attrs) -> optuna.trial.FrozenTrial:
    t0 = datetime.datetime(2026, 1, 1)
    return optuna.trial.FrozenTrial(
        number=number, trial_id=number, state=TrialState.FAIL if attrs else TrialState.COMPLETE,
        value=None if attrs else 0.5, datetime_start=t0 + datetime.timedelta(seconds=start_s),
        datetime_complete=t0 + datetime.timedelta(seconds=end_s), params={"x": 0.5},
        distributions={"x": optuna.distributions.FloatDistribution(0, 1)}, user_attrs=attrs, system_attrs={},
        intermediate_values={})


def test_a_study_searched_before_seconds_were_kept_counts_its_trials_and_is_marked_partial(tmp_path, clock):
    """A study of older code has trials but no saved seconds: the cap and the total count what its
    trials' own start/end times show (a batched round of two overlapping trials 0-10 s and 2-12 s,
    then one 20-25 s: 17 s; a stale trial's end is when the resume marked it, so it is left out),
    and the total is flagged incomplete: a record then says `search_seconds_complete: false`."""
    url = f"journal:///{tmp_path / 'optuna.journal'}"
    old = open_study("t/o", open_storage(url), 0)
    for t in (_old_trial(0, 0, 10), _old_trial(1, 2, 12), _old_trial(2, 20, 25), _old_trial(3, 30, 4000, stale=True)):
        old.add_trial(t)
    study = run_search(open_study("t/o", open_storage(url), 0), _per_trial_seconds(clock), Budget(10, 30, 1))[0]
    assert study.user_attrs[PARTIAL_KEY] is True and study.user_attrs[BEFORE_KEY] == pytest.approx(17.0)
    # 13 s of the cap left: trial #4 (9 s) and #5 (10 s) start, #6 does not
    assert trial_counts(study, 10).spent == 5
    assert search_time(study) == clock_module.SearchTime(17.0 + 9.0 + 10.0, complete=False, clock="wall")


def test_the_seconds_are_saved_while_a_trial_trains(tmp_path):
    """A kill during a long trial loses at most one save period of seconds: the background thread
    saves the busy seconds while the trial runs (real time here, a 0.05 s period)."""
    import threading
    import time

    study = open_study("t/t", open_storage(f"journal:///{tmp_path / 'optuna.journal'}"), 0)
    seen: list[float] = []
    release = threading.Event()

    def objective(trial: optuna.Trial) -> float:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not release.is_set():
            saved = search_time(study).seconds
            if saved >= 0.2:  # the thread saved mid-trial
                seen.append(saved)
                release.set()
            time.sleep(0.02)
        return 0.0

    clock = clock_module.SearchClock(study, 1000.0, save_every_s=0.05)
    with clock.ticking(), clock.busy():
        objective(study.ask())
    assert seen, "no save while the trial was training"
    assert search_time(study).seconds >= seen[0]


def _idle_trials(seconds: float):
    """Trials that take `seconds` of wall clock and almost no CPU: a neighbour has the machine."""
    import time

    def objective(trial: optuna.Trial) -> float:
        time.sleep(seconds)
        return float(trial.number)

    return objective


@pytest.mark.parametrize(("cap_clock", "spent"), [("wall", 2), ("cpu", 6)])
def test_a_cpu_run_counts_cpu_seconds_so_a_busy_machine_does_not_spend_its_cap(tmp_path, cap_clock, spent):
    """Six trials of 0.3 s of wall clock each (sleeping: the CPU is someone else's) against a 0.5 s cap.
    In wall seconds the cap is spent after the second trial; in CPU seconds the trials cost almost
    nothing and all six run. On the standard run a round of 5 token trials took ~400 s on a quiet
    machine and 1,580 s beside the test suite, so a wall-clock cap gave replicates different budgets."""
    budget = Budget(trials=6, timeout_s=0.5, seeds=1, cap_clock=cap_clock)
    study = open_study("s", open_storage(f"journal:///{tmp_path / 'j.journal'}"), 0)
    _, seconds = run_search(study, _idle_trials(0.3), budget)
    assert trial_counts(study, 6).spent == spent
    if cap_clock == "cpu":
        assert seconds < 0.5  # CPU seconds of the trial loop, not the 1.8 s of wall clock
    else:
        assert seconds >= 0.6


def test_the_cap_clock_is_checked_and_chosen_by_device():
    import torch

    from fusebench.search.study import cap_clock_for

    with pytest.raises(ValueError, match="cap_clock"):
        Budget(trials=1, timeout_s=1, seeds=1, cap_clock="gpu")
    assert cap_clock_for(torch.device("cpu")) == "cpu" and cap_clock_for(torch.device("cuda")) == "wall"
    assert Budget(trials=1, timeout_s=1, seeds=1).cap_clock == "wall"  # a study's budget written before it


class _TwoThreadCpu(FakeClock):
    def process_time(self) -> float:  # both intra-op threads busy: two CPU seconds per second
        return 2 * self.now


def test_the_cpu_cap_counts_a_second_of_two_busy_threads_as_one(tmp_path, monkeypatch):
    """Fine-tuning on a CPU trains on every core. Counted undivided, the CPU seconds of its two
    threads spent a 25 s cap after 12.5 s of wall clock: two trials of 10 s, not three."""
    import torch

    fake = _TwoThreadCpu()
    monkeypatch.setattr(clock_module, "time", fake)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        def objective(trial: optuna.Trial) -> float:
            fake.sleep(10.0)
            return float(trial.number)

        study = open_study("s", open_storage(f"journal:///{tmp_path / 'j.journal'}"), 0)
        _, seconds = run_search(study, objective, Budget(trials=6, timeout_s=25, seeds=1, cap_clock="cpu"))
    finally:
        torch.set_num_threads(threads)
    assert trial_counts(study, 6).spent == 3
    assert seconds == pytest.approx(30.0)


def test_a_study_resumed_under_another_clock_says_both(tmp_path, clock):
    """A study searched in wall seconds (by code before the CPU clock, which kept no clock name, or on
    a GPU) and resumed by a CPU run sums seconds of both clocks: its records say "wall+cpu", not "cpu"."""
    url = f"journal:///{tmp_path / 'j.journal'}"
    objective = _per_trial_seconds(clock)
    wall = run_search(open_study("wall", open_storage(url), 0), objective, Budget(trials=1, timeout_s=1000, seeds=1))[0]
    assert search_time(wall).clock == "wall"
    old = open_study("old", open_storage(url), 0)
    old.set_user_attr(f"{KEY_PREFIX}otherhost:1:abcd", 12.0)  # saved by code that kept no clock name
    assert search_time(old).clock == "wall"
    resumed = run_search(old, objective, Budget(trials=1, timeout_s=1000, seeds=1, cap_clock="cpu"))[0]
    assert search_time(resumed).clock == "wall+cpu" and search_time(resumed).seconds > 12.0
    fresh = run_search(open_study("new", open_storage(url), 0), objective,
                       Budget(trials=1, timeout_s=1000, seeds=1, cap_clock="cpu"))[0]
    assert search_time(fresh).clock == "cpu"


def _interrupted_at_trial(clock: FakeClock, number: int):
    """`_per_trial_seconds`, except that trial `number` is interrupted (Ctrl-C, the time box) after its seconds."""
    def objective(trial: optuna.Trial) -> float:
        clock.sleep(5.0 + trial.number)
        if trial.number == number:
            raise KeyboardInterrupt
        return trial.suggest_float("x", 0.0, 1.0)

    return objective


@pytest.mark.parametrize("path", ["sequential", "batched"])
def test_an_interrupted_trial_is_retried_without_charging_the_cap_twice(tmp_path, clock, path):
    """Trials 0-1 take 5 + 6 s and are told; trial 2 trains 7 s and is interrupted. It is retried
    (`interrupted`; in a batched round its unstarted round-mate #3 too), so its 7 s are lost work, not the
    strategy's search: the study counts 11 s and says 7 s lost. The resumed process retries it (sequential:
    #3, 8 s; batched: #4, 9 s), below the 21 s cap, so one more trial starts: 4 of 5 trials spent. Before
    the fix the study counted 18 s after the interrupt, 26 or 27 s after the retry, and the cap stopped
    the search there: 3 of 5."""
    url = f"journal:///{tmp_path / 'optuna.journal'}"
    budget = Budget(trials=5, timeout_s=21, seeds=1)
    objective = _interrupted_at_trial(clock, 2)
    with pytest.raises(KeyboardInterrupt):
        if path == "sequential":
            run_search(open_study("t/i", open_storage(url), 0), objective, budget)
        else:
            seq = BatchObjective(lambda t: None, lambda trials, xs, may_start: [objective(t) for t in trials])
            run_batched_search(open_study("t/i", open_storage(url), 0), seq, budget, 2)
    interrupted = open_study("t/i", open_storage(url), 0)
    assert search_time(interrupted).seconds == pytest.approx(11.0)
    assert search_time(interrupted).lost == pytest.approx(7.0)
    study = _search(path, open_study("t/i", open_storage(url), 0), budget, clock)
    counts = trial_counts(study, 5)
    assert counts.spent == 4 and counts.retried >= 1
    assert search_time(study).seconds == pytest.approx(11.0 + (8.0 + 9.0 if path == "sequential" else 9.0 + 10.0))
    assert search_time(study).record_fields()["search_seconds_lost"] == pytest.approx(7.0)


_KILLED_SEARCH = search_script("t/k", trials=3, hang_at=1)


def test_a_killed_process_s_trial_in_flight_is_not_charged_to_the_cap(tmp_path):
    """A real process is killed (SIGKILL: what a session's end, a lost machine or the OOM killer does) while
    its trial 1 trains; trial 0 (0.3 s) was told. The process that resumes marks trial 1 stale and sets the
    killed process's seconds back to those of its told trials: the trial is retried, and its seconds count
    once, in the retry. Before the fix the killed process's seconds in trial 1 stayed in the cap."""
    import sys

    url = f"journal:///{tmp_path / 'optuna.journal'}"
    proc = LoggedPopen([sys.executable, "-c", _KILLED_SEARCH, url], tmp_path / "child.log")
    # trial 0 told, and trial 1 has trained for 0.5 s and saved it
    attrs = kill_at(proc, lambda: trained_past_commit(url, "t/k", 0.5, told=True), 60, poll_s=0.1,
                    settled=lambda: not (tmp_path / "optuna.journal.lock").exists())
    (key,) = [k for k in attrs if k.startswith(KEY_PREFIX)]
    before = search_time(optuna.load_study(study_name="t/k", storage=open_storage(url)))
    assert before.seconds >= 0.8  # what the cap counted before the fix: trial 0 and trial 1's half-second

    def quick(trial: optuna.Trial) -> float:
        return trial.suggest_float("x", 0.0, 1.0)

    study, _ = run_search(open_study("t/k", open_storage(url), 0), quick, Budget(trials=3, timeout_s=1000, seeds=1))
    counts = trial_counts(study, 3)
    assert (counts.spent, counts.retried) == (3, 1)
    ident = key[len(KEY_PREFIX):]
    told = study.user_attrs[clock_module.COMMITTED_PREFIX + ident]
    assert 0.3 <= told < 0.8 and study.user_attrs[key] == pytest.approx(told)
    lost = study.user_attrs[clock_module.LOST_PREFIX + ident]
    assert lost >= 0.5 and search_time(study).lost == pytest.approx(lost)
    # the resumer's own seconds (two quick trials: 0.06-0.13 s on a loaded 2-core machine) are not a fixed 0.05
    resumer = sum(v for k, v in study.user_attrs.items() if k.startswith(KEY_PREFIX) and k != key)
    assert search_time(study).seconds == pytest.approx(before.seconds - lost + resumer, abs=0.01)


_KILLED_IN_FIRST_TRIAL = search_script("t/k1", trials=2, hang_at=0)  # none of its trials is ever told


def test_a_process_killed_in_its_first_trial_is_not_charged_for_it(tmp_path):
    """A real process is killed (SIGKILL) while its very first trial trains: it never told a trial, so it
    never committed. Its seconds all belong to that trial, which the resumer marks stale and retries: they
    must not count. Before the fix a process saved its committed seconds only at its first told trial, so
    one killed before that had none, `drop_uncommitted` took it for code that kept none, and its seconds
    stayed in the cap (the trial in flight charged twice) — every session killed during a study's first
    round (a batched round: its whole length) kept the double charge the commit set out to remove."""
    import sys

    url = f"journal:///{tmp_path / 'optuna.journal'}"
    proc = LoggedPopen([sys.executable, "-c", _KILLED_IN_FIRST_TRIAL, url], tmp_path / "child.log")
    # trial 0 has trained for 0.5 s and saved it (committed: the 0 s it registered with)
    attrs = kill_at(proc, lambda: trained_past_commit(url, "t/k1", 0.5, told=False), 60, poll_s=0.1,
                    settled=lambda: not (tmp_path / "optuna.journal.lock").exists())
    (key,) = [k for k in attrs if k.startswith(KEY_PREFIX)]
    assert search_time(optuna.load_study(study_name="t/k1", storage=open_storage(url))).seconds >= 0.5

    def quick(trial: optuna.Trial) -> float:
        return trial.suggest_float("x", 0.0, 1.0)

    study, _ = run_search(open_study("t/k1", open_storage(url), 0), quick, Budget(trials=2, timeout_s=1000, seeds=1))
    assert (trial_counts(study, 2).spent, trial_counts(study, 2).retried) == (2, 1)
    assert study.user_attrs[key] == 0.0, "the killed process told no trial: none of its seconds count"
    lost = study.user_attrs[clock_module.LOST_PREFIX + key[len(KEY_PREFIX):]]
    assert lost >= 0.5 and search_time(study).lost == pytest.approx(lost)


_KILLED_BETWEEN_TELLS = """
import os, signal, sys, time
import fusebench.search.clock as clock_module
import fusebench.search.trial_batch as trial_batch
from fusebench.search.storage import open_storage
from fusebench.search.study import Budget, open_study
clock_module.SAVE_EVERY_S = 0.05
real_tell = trial_batch._tell
told = []

def tell_then_die(study, trial, outcome):
    state = real_tell(study, trial, outcome)
    told.append(trial.number)
    if len(told) == 3:
        os.kill(os.getpid(), signal.SIGKILL)  # the kill lands after round 2's first tell, before its second
    return state

trial_batch._tell = tell_then_die

def train(trials, xs, may_start):
    out = []
    for t in trials:
        time.sleep(0.6)  # one after another, as trials that cannot share a shape
        out.append(0.5)
    return out

study = open_study("t/b", open_storage(sys.argv[1]), 0)
trial_batch.run_batched_search(study, trial_batch.BatchObjective(lambda t: None, train),
                               Budget(trials=4, timeout_s=1000, seeds=1), 2)
"""


def test_a_process_killed_between_the_tells_of_a_round_keeps_its_told_trial_s_seconds(tmp_path):
    """A real process trains batched rounds of 2 trials (0.6 s each, one after the other); after round 1
    (trials 0-1, told and committed) it is killed (SIGKILL) in round 2 after telling trial 2, before trial 3.
    Trial 2 is COMPLETE and spent: its seconds belong to the search and must stay in the cap; trial 3 is
    left RUNNING, marked stale and retried. Before the fix a round committed its seconds only when every
    trial was told, so the resumer set the killed process back to its seconds after round 1: trial 2's
    0.6 s were dropped although it was spent (an
    undercount, a bigger budget for the strategy). Now the round commits when its training has returned,
    before its tells: a kill among them leaves the untold trials' seconds counted (the safe side)."""
    import subprocess
    import sys

    url = f"journal:///{tmp_path / 'optuna.journal'}"
    proc = subprocess.run([sys.executable, "-c", _KILLED_BETWEEN_TELLS, url], timeout=120)
    assert proc.returncode == -9
    killed = optuna.load_study(study_name="t/b", storage=open_storage(url))
    assert [t.state for t in sorted(killed.trials, key=lambda t: t.number)] == [TrialState.COMPLETE] * 3 + [TrialState.RUNNING]
    (key,) = [k for k in killed.user_attrs if k.startswith(KEY_PREFIX)]

    def quick(trials, xs, may_start):
        return [0.5 for _ in trials]

    study, _ = run_batched_search(open_study("t/b", open_storage(url), 0), BatchObjective(lambda t: None, quick),
                                  Budget(trials=4, timeout_s=1000, seeds=1), 2)
    assert (trial_counts(study, 4).spent, trial_counts(study, 4).retried) == (4, 1)
    assert study.user_attrs[key] >= 3 * 0.6, "trials 0-2 were told: their 3 × 0.6 s count"


def test_a_ctrl_c_that_lands_after_a_trial_is_told_keeps_that_trial_s_seconds(tmp_path, clock):
    """The time box's SIGINT raises KeyboardInterrupt wherever the main thread is (bench/run/interrupt.py),
    here just after optuna told trial 1 COMPLETE, while it logs it (before the per-trial callback). Trial 1
    (6 s) is spent, so its seconds count: 5 + 6 = 11 s, none lost. Before the fix the process committed only
    in that callback, so the interrupt dropped trial 1's seconds as those of an interrupted trial: 5 s counted
    for 2 spent trials (an undercount: a bigger budget for the strategy)."""
    url = f"journal:///{tmp_path / 'optuna.journal'}"
    study = open_study("t/c", open_storage(url), 0)
    real_log = study._log_completed_trial

    def log_then_interrupted(*args):  # optuna 4.3 passes the FrozenTrial, later ones (values, number, params)
        real_log(*args)
        number = args[0].number if len(args) == 1 else args[1]
        if number == 1:
            raise KeyboardInterrupt  # the signal lands here: trial 1 is told

    study._log_completed_trial = log_then_interrupted  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        run_search(study, _per_trial_seconds(clock), Budget(trials=3, timeout_s=1000, seeds=1))
    after = open_study("t/c", open_storage(url), 0)
    assert [t.state for t in sorted(after.trials, key=lambda t: t.number)] == [TrialState.COMPLETE] * 2
    assert trial_counts(after, 3).spent == 2
    assert search_time(after).seconds == pytest.approx(11.0) and search_time(after).lost == 0.0


_KILLED_BETWEEN_COMMIT_WRITES = """
import os, signal, sys, time
import optuna
import fusebench.search.clock as clock_module
from fusebench.search.storage import open_storage
from fusebench.search.study import Budget, open_study, run_search
clock_module.SAVE_EVERY_S = 1000.0  # no periodic save: the seconds attr is what registration wrote (0 s)
real_set = optuna.Study.set_user_attr

def set_then_die(self, key, value):
    real_set(self, key, value)
    if key.startswith(clock_module.COMMITTED_PREFIX) and value > 0:
        os.kill(os.getpid(), signal.SIGKILL)  # after the committed seconds, before the seconds attr

optuna.Study.set_user_attr = set_then_die

def objective(trial):
    time.sleep(0.6)
    return trial.suggest_float("x", 0.0, 1.0)

run_search(open_study("t/w", open_storage(sys.argv[1]), 0), objective, Budget(trials=2, timeout_s=1000, seeds=1))
"""


def test_a_process_killed_between_its_two_commit_writes_keeps_its_committed_seconds(tmp_path):
    """`commit` writes the committed seconds, then the seconds attr; a real process is killed (SIGKILL)
    between the two, its seconds attr older (here registration's 0 s; in a run up to SAVE_EVERY_S old) than
    its committed 0.6 s. Its trial is retried; the process's seconds must be set back to the committed ones,
    not left below them. Before the fix `drop_uncommitted` only lowered seconds above the committed ones, so
    these stayed at 0 s: 0.6 s of committed search missing from the cap."""
    import subprocess
    import sys

    url = f"journal:///{tmp_path / 'optuna.journal'}"
    proc = subprocess.run([sys.executable, "-c", _KILLED_BETWEEN_COMMIT_WRITES, url], timeout=120)
    assert proc.returncode == -9
    killed = optuna.load_study(study_name="t/w", storage=open_storage(url))
    (key,) = [k for k in killed.user_attrs if k.startswith(KEY_PREFIX)]
    committed = killed.user_attrs[clock_module.COMMITTED_PREFIX + key[len(KEY_PREFIX):]]
    assert killed.user_attrs[key] == 0.0 and committed >= 0.6

    def quick(trial: optuna.Trial) -> float:
        return trial.suggest_float("x", 0.0, 1.0)

    study, _ = run_search(open_study("t/w", open_storage(url), 0), quick, Budget(trials=2, timeout_s=1000, seeds=1))
    assert trial_counts(study, 2).spent == 2
    assert study.user_attrs[key] == pytest.approx(committed)
