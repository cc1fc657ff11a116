"""The seconds a killed process's trials cost, dropped from the search cap (bench/search/clock.py), when
more than one process is involved: two processes that drop the same dead one at once, a live process
taken for dead (a stall longer than PostgreSQL's heartbeat grace), and a dead process whose host name and
pid a live one reuses (a container restarted under the same name). Real optuna journal studies; the
seconds come from a fake clock."""

from __future__ import annotations

import os
import socket
from contextlib import AbstractContextManager

import optuna
import pytest

import fusebench.search.clock as clock_module
import fusebench.search.stale as stale_module
from fusebench.search.clock import (
    COMMITTED_PREFIX,
    KEY_PREFIX,
    LOST_PREFIX,
    TRIAL_CLOCK_ATTR,
    SearchClock,
    drop_uncommitted,
    search_time,
)
from fusebench.search.stale import fail_stale_running
from fusebench.search.storage import DropStaleSeconds, open_storage
from fusebench.search.study import Budget, open_study, run_search
from fusebench.search.trial_batch import BatchObjective, run_batched_search
from tests.test_budget import FakeClock


@pytest.fixture()
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(clock_module, "time", fake)
    return fake


def _study(tmp_path) -> optuna.Study:
    return open_study("t/lost", open_storage(f"journal:///{tmp_path / 'optuna.journal'}"), 0)


def test_two_processes_that_drop_one_dead_process_at_once_count_its_lost_seconds_once(tmp_path):
    """A dead process saved 100 s, 60 of them committed. Process A drops it; between A's two writes,
    process B (its own view of the storage) drops it too. Before the fix A wrote the lost seconds first,
    B read them with the seconds not yet set back and added 40 s a second time (80 s lost)."""
    dead = "other-host:4242:deadbeef"
    seed = _study(tmp_path)
    seed.set_user_attr(KEY_PREFIX + dead, 100.0)
    seed.set_user_attr(COMMITTED_PREFIX + dead, 60.0)
    first, second = _study(tmp_path), _study(tmp_path)
    real_set = first.set_user_attr
    writes: list[str] = []

    def set_then_let_the_other_in(key: str, value) -> None:
        real_set(key, value)
        writes.append(key)
        if len(writes) == 1:
            drop_uncommitted(second, {("other-host", 4242)})

    first.set_user_attr = set_then_let_the_other_in  # type: ignore[method-assign]
    drop_uncommitted(first, {("other-host", 4242)})  # a trial of code before clock keys: by host and pid
    spent = search_time(_study(tmp_path))
    assert spent.seconds == pytest.approx(60.0) and spent.lost == pytest.approx(40.0)


def _open(cm: AbstractContextManager, kept: list) -> None:
    """Enter a busy block that never ends (the process is killed inside it); `kept` holds it, so that
    garbage collection does not close it."""
    cm.__enter__()
    kept.append(cm)


def test_a_live_process_taken_for_dead_is_not_recorded_as_having_lost_seconds(tmp_path, clock):
    """A process commits 50 s, saves 80 s, stalls; another process takes it for dead (on PostgreSQL: no
    heartbeat for the grace period) and sets its seconds back to 50 (30 lost). It wakes up, its trial
    ends, it commits 100 s: those 30 s count again, so they are not lost. Before the fix the study kept
    `search_seconds_lost` = 30 s that the cap had counted after all."""
    study = _study(tmp_path)
    live = SearchClock(study, 1000.0, save_every_s=1000.0)
    with live.busy():
        clock.sleep(50.0)
    with live.busy():
        clock.sleep(30.0)
        live.save()
        assert drop_uncommitted(_study(tmp_path), {(socket.gethostname(), os.getpid())}) == pytest.approx(30.0)
        assert search_time(_study(tmp_path)).lost == pytest.approx(30.0)
        clock.sleep(20.0)
    spent = search_time(_study(tmp_path))
    assert spent.seconds == pytest.approx(100.0) and spent.lost == 0.0


def test_a_dead_process_s_trial_sets_back_its_own_seconds_not_those_of_a_live_one_with_its_host_and_pid(tmp_path, clock):
    """Clocks `dead` and `live` share a host name and a pid (as a restarted container's processes do).
    `dead` committed 10 s and saved 25 s, and its trial is failed as stale; `live` committed 5 s and
    saved 12 s. The stale callback sets `dead` back to 10 s and leaves `live` at 12 s. Before the fix
    it dropped by (host, pid) and set `live` back to 5 s too."""
    study = _study(tmp_path)
    dead, live = SearchClock(study, 1000.0, save_every_s=1000.0), SearchClock(study, 1000.0, save_every_s=1000.0)
    with dead.busy():
        trial = study.ask()
        for name, value in ((TRIAL_CLOCK_ATTR, dead.key), ("host", socket.gethostname()), ("pid", os.getpid())):
            trial.set_user_attr(name, value)
        clock.sleep(10.0)
    kept: list = []
    _open(dead.busy(), kept)
    clock.sleep(15.0)
    dead.save()
    with live.busy():
        clock.sleep(5.0)
    _open(live.busy(), kept)
    clock.sleep(7.0)
    live.save()

    DropStaleSeconds(lambda s, t: None)(study, study._storage.get_trial(trial._trial_id))
    attrs = _study(tmp_path).user_attrs
    assert attrs[KEY_PREFIX + dead.key] == pytest.approx(10.0) and attrs[LOST_PREFIX + dead.key] == pytest.approx(15.0)
    assert attrs[KEY_PREFIX + live.key] == pytest.approx(12.0) and LOST_PREFIX + live.key not in attrs


@pytest.mark.parametrize("path", ["sequential", "batched"])
def test_every_searched_trial_carries_its_process_s_clock_key(tmp_path, clock, path):
    """The key that `trial_owners` drops a stale trial's process by is on each trial the search runs."""
    study = _study(tmp_path)
    seen: list[str] = []

    def objective(trial: optuna.Trial) -> float:
        seen.append(trial.user_attrs[TRIAL_CLOCK_ATTR])
        clock.sleep(1.0)
        return trial.suggest_float("x", 0.0, 1.0)

    budget = Budget(trials=3, timeout_s=1000, seeds=1)
    if path == "sequential":
        run_search(study, objective, budget)
    else:
        run_batched_search(study, BatchObjective(lambda t: None, lambda ts, xs, may: [objective(t) for t in ts]), budget, 2)
    (key,) = {k[len(KEY_PREFIX):] for k in study.user_attrs if k.startswith(KEY_PREFIX)}
    assert seen == [key] * 3
    assert all(t.user_attrs[TRIAL_CLOCK_ATTR] == key for t in study.trials)


def test_a_live_process_taken_for_dead_then_killed_after_a_save_loses_its_seconds_once(tmp_path, clock):
    """A process commits 50 s, saves 80 s, stalls and is taken for dead (30 s lost, seconds set back to 50).
    It wakes up, its periodic save writes 100 s (the 30 s count again), and it is killed before its next
    commit; the process that marks its trial stale sets it back to 50 s: 50 s lost, not 30 + 50. Its
    save counted the 30 s again but left them in `search_seconds_lost` too, so the real drop added them a
    second time (seconds + lost = 130 s for a process that spent 100)."""
    study = _study(tmp_path)
    live = SearchClock(study, 1000.0, save_every_s=1000.0)
    with live.busy():
        clock.sleep(50.0)
    kept: list = []
    _open(live.busy(), kept)
    clock.sleep(30.0)
    live.save()
    me = {(socket.gethostname(), os.getpid())}
    assert drop_uncommitted(_study(tmp_path), me) == pytest.approx(30.0)  # taken for dead
    clock.sleep(20.0)
    live.save()  # the periodic save: 100 s, the 30 s counted again
    assert search_time(_study(tmp_path)).seconds == pytest.approx(100.0)
    # killed here, before any commit: its trial is marked stale for real
    assert drop_uncommitted(_study(tmp_path), me) == pytest.approx(50.0)
    spent = search_time(_study(tmp_path))
    assert spent.seconds == pytest.approx(50.0) and spent.lost == pytest.approx(50.0)


@pytest.mark.parametrize("path", ["sequential", "batched"])
def test_a_live_trial_caught_between_its_attrs_does_not_set_back_its_process_s_seconds(tmp_path, clock, monkeypatch, path):
    """`trial_owners` says a trial with a host and pid but no clock key is one of a process killed between
    writing those and its key; the search wrote the key first. A trial with the key and no host/pid yet is
    stale on a file storage (`stale._is_stale`): another process that checked for stale trials in that
    window failed the live trial and set its live process's seconds back by the clock key. Written host
    and pid first, such a trial has no owner (nothing dropped) or names a live pid (not stale). (That a
    trial without its pid yet is failed as stale is older than the clock key, and not asserted here.)"""
    study = _study(tmp_path)
    other = _study(tmp_path)  # another process's view of the journal
    failed: list[int] = []
    real_set = optuna.Trial.set_user_attr

    def another_process_checks_first(self: optuna.Trial, name: str, value) -> None:
        attrs = self.storage.get_trial_user_attrs(self._trial_id)
        if attrs:  # the trial's second and later attrs (before its first one it is stale whatever the order)
            (key,) = [k for k in other.user_attrs if k.startswith(KEY_PREFIX)]
            ident = key[len(KEY_PREFIX):]
            # the search's periodic save wrote 5 s it has not committed yet
            other.set_user_attr(key, float(other.user_attrs[COMMITTED_PREFIX + ident]) + 5.0)
            failed.append(fail_stale_running(other))
            if failed[-1]:
                return  # the trial is FAIL now: optuna would refuse the write
        real_set(self, name, value)

    monkeypatch.setattr(optuna.Trial, "set_user_attr", another_process_checks_first)
    dropped: list[float] = []  # what the other process set the live one's seconds back by (its next commit restores them)

    def recorded(study: optuna.Study, dead) -> float:
        dropped.append(drop_uncommitted(study, dead))
        return dropped[-1]

    monkeypatch.setattr(stale_module, "drop_uncommitted", recorded)

    def objective(trial: optuna.Trial) -> float:
        clock.sleep(1.0)
        return trial.suggest_float("x", 0.0, 1.0)

    budget = Budget(trials=2, timeout_s=1000, seeds=1)
    try:
        if path == "sequential":
            run_search(study, objective, budget)
        else:
            run_batched_search(study, BatchObjective(lambda t: None, lambda ts, xs, may: [objective(t) for t in ts]),
                               budget, 2)
    except Exception:
        pass  # asserted below
    assert failed  # the other process checked in the windows
    assert not any(dropped), "a live process's seconds were set back"


def test_a_trial_asked_a_moment_ago_without_its_attrs_yet_is_not_failed_by_another_process(tmp_path):
    """On a file storage, another process's stale check used to fail a live trial between its `ask` and
    its host/pid writes; the live process's next write then raised `UpdateFinishedTrialError` out of its
    search. Attr-less trials are stale only once `stale.ATTRLESS_GRACE_S` old."""
    live, other = _study(tmp_path), _study(tmp_path)
    trial = live.ask()
    assert fail_stale_running(other) == 0
    trial.set_user_attr("host", socket.gethostname())  # raised UpdateFinishedTrialError before
    live.tell(trial, 0.5)
    assert [t.state for t in _study(tmp_path).trials] == [optuna.trial.TrialState.COMPLETE]
