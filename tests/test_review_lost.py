"""Review of eb269d8 (lost seconds with more than one process): cases it left wrong. Real optuna journal
studies; the seconds come from a fake clock (tests/test_search_seconds_lost.py's fixtures)."""

from __future__ import annotations

import os
import socket

import optuna
import pytest

from fusebench.search.clock import COMMITTED_PREFIX, KEY_PREFIX, SearchClock, drop_uncommitted, search_time
import fusebench.search.stale as stale_module
from fusebench.search.stale import fail_stale_running
from fusebench.search.study import Budget, run_search
from fusebench.search.trial_batch import BatchObjective, run_batched_search
from tests.test_search_seconds_lost import _open, _study, clock  # noqa: F401  (the fake-clock fixture)


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
