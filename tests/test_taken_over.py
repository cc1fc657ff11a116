"""A live search process taken for a killed one: it stalled past the grace period (a SIGSTOP, a paused VM,
a swapping machine), and another process failed its RUNNING trial as stale, to be retried. When it wakes,
its trial is no longer its own: `trial.report` raises `UpdateFinishedTrialError` and optuna's tell
`ValueError: Cannot tell a FAIL trial`. Before, that error left `study.optimize` and crashed the owner's
whole search (review of stop 31). Now the owner drops that trial (its result and its seconds), and its
search goes on: the retried trial is run again by whoever gets to it, and the budget stays exact.

In-process here (a stand-in for the other process fails the trial through the storage, as
`stale.fail_stale_running` does), and with a real SIGSTOPped process on a journal in
`test_a_suspended_owner_on_another_host_wakes_and_finishes_its_search`; on PostgreSQL (optuna's heartbeat
check) in tests/integration/test_postgres.py."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from fusebench.search import stale
from fusebench.search.clock import search_time
from fusebench.search.storage import open_storage
from fusebench.search.study import Budget, open_study, run_search, trial_counts
from fusebench.search.trial_batch import BatchObjective, run_batched_search
from tests.killed_search import suspended_script
from tests.killpoint import LoggedPopen

REPO = Path(__file__).resolve().parents[1]


def _fail_as_stale(trial: optuna.Trial) -> None:
    """What another process's `fail_stale_running` does to a trial it takes for a killed process's."""
    storage = trial.study._storage
    storage.set_trial_user_attr(trial._trial_id, "stale", True)
    storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)


def _study(tmp_path: Path, name: str = "t/concat") -> optuna.Study:
    return open_study(name, open_storage(f"journal:///{tmp_path}/optuna.journal"), 0)


@pytest.mark.parametrize("then", ["report", "return", "raise"])
def test_a_trial_failed_under_its_owner_is_dropped_and_the_search_goes_on(tmp_path: Path, then: str, caplog) -> None:
    """The owner's next step after the take-over: a report (the usual case: the next epoch), returning its
    value (the last epoch), or failing. Each crashed `run_search` with `ValueError` before."""
    study = _study(tmp_path)

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0.0, 1.0)
        if trial.number == 1:
            trial.report(0.1, 0)
            time.sleep(0.2)  # the stall; another process fails the trial
            _fail_as_stale(trial)
            if then == "report":
                trial.report(0.2, 1)
            elif then == "raise":
                raise RuntimeError("diverged")
        return x

    study, _ = run_search(study, objective, Budget(trials=3, timeout_s=60, seeds=1), poll_s=0.05)
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    counts = trial_counts(study, 3)
    assert (counts.spent, counts.complete, counts.failed, counts.retried) == (3, 3, 0, 1)
    assert "trial(s) 1 of this process were failed as stale by another process" in caplog.text
    # the dropped trial's seconds (>= its 0.2 s stall) leave the cap, as a killed or interrupted trial's do
    assert search_time(study).lost >= 0.2


def test_a_batched_round_taken_over_is_dropped_and_the_search_goes_on(tmp_path: Path, caplog) -> None:
    study = _study(tmp_path, "t/batch")

    def train(trials: list[optuna.Trial], xs: list[float], may_start) -> list[float | BaseException]:
        if trials[0].number == 2:  # round 2 stalls; another process fails both of its trials
            time.sleep(0.2)
            for trial in trials:
                _fail_as_stale(trial)
        return list(xs)

    study, _ = run_batched_search(study, BatchObjective(lambda t: t.suggest_float("x", 0.0, 1.0), train),
                                  Budget(trials=4, timeout_s=60, seeds=1), 2, poll_s=0.05)
    counts = trial_counts(study, 4)
    assert (counts.spent, counts.complete, counts.failed, counts.retried) == (4, 4, 0, 2)
    assert [t.number for t in study.trials if t.user_attrs.get("stale")] == [2, 3]
    assert "trial(s) 2, 3 of this process were failed as stale" in caplog.text
    assert search_time(study).lost >= 0.2


def test_one_trial_of_a_round_taken_over_keeps_the_others(tmp_path: Path) -> None:
    study = _study(tmp_path, "t/half")

    def train(trials: list[optuna.Trial], xs: list[float], may_start) -> list[float | BaseException]:
        if trials[0].number == 0:
            _fail_as_stale(trials[1])
        return list(xs)

    study, _ = run_batched_search(study, BatchObjective(lambda t: t.suggest_float("x", 0.0, 1.0), train),
                                  Budget(trials=2, timeout_s=60, seeds=1), 2, poll_s=0.05)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert trial_counts(study, 2).retried == 1


@pytest.mark.parametrize("taken", [1, 2])
def test_a_rounds_seconds_are_split_by_the_share_of_its_trials_taken_over(tmp_path: Path, monkeypatch,
                                                                          taken: int) -> None:
    """Review of stop 32: a round of 4 trials, `taken` of them failed by another process during its 100 s of
    training. Their share of the seconds is lost (retried, counted by the retry), the rest counts. Before,
    a round taken in part kept all 100 s (and its commit cleared the other process's record of the loss)."""
    import fusebench.search.clock as clock_module
    from tests.test_budget import FakeClock

    fake = FakeClock()
    monkeypatch.setattr(clock_module, "time", fake)
    study = _study(tmp_path, f"t/share-{taken}")

    def train(trials: list[optuna.Trial], xs: list[float], may_start) -> list[float | BaseException]:
        fake.sleep(100.0 if trials[0].number == 0 else 10.0)
        if trials[0].number == 0:
            for trial in trials[:taken]:
                _fail_as_stale(trial)
        return list(xs)

    study, _ = run_batched_search(study, BatchObjective(lambda t: t.suggest_float("x", 0.0, 1.0), train),
                                  Budget(trials=4, timeout_s=10_000, seeds=1), 4, poll_s=0.05)
    # round 1: 100 s, `taken` of 4 trials lost; round 2: the `taken` retried trials, 10 s
    assert search_time(study).lost == pytest.approx(100.0 * taken / 4)
    assert search_time(study).seconds == pytest.approx(100.0 * (4 - taken) / 4 + 10.0)
    assert trial_counts(study, 4).retried == taken


def test_the_share_counts_the_trials_that_trained_only(tmp_path: Path, monkeypatch) -> None:
    """Review of stop 33: a cap-bound round of 4 in which 1 trial trained (the other 3 not started: they
    cost nothing) and was taken over lost only 1/4 of its 100 s: 75 s of thrown-away work stayed counted."""
    import fusebench.search.clock as clock_module
    from fusebench.search.trial_batch import NotStarted
    from tests.test_budget import FakeClock

    fake = FakeClock()
    monkeypatch.setattr(clock_module, "time", fake)
    study = _study(tmp_path, "t/share-started")

    def train(trials: list[optuna.Trial], xs: list[float], may_start) -> list[float | BaseException]:
        fake.sleep(100.0 if trials[0].number == 0 else 10.0)
        if trials[0].number == 0:
            _fail_as_stale(trials[0])
            return [xs[0]] + [NotStarted() for _ in xs[1:]]
        return list(xs)

    run_batched_search(study, BatchObjective(lambda t: t.suggest_float("x", 0.0, 1.0), train),
                       Budget(trials=4, timeout_s=10_000, seeds=1), 4, poll_s=0.05)
    assert search_time(study).lost == pytest.approx(100.0)


@pytest.mark.parametrize(("taken", "started", "share"), [
    ([True, False, False, False], [True, True, True, True], 0.25),
    ([True, True, False, False], [True, False, False, False], 1.0),
    ([False, True, True, True], [True, False, False, False], 0.0),
    ([True, True], [False, False], 1.0),
    ([True, False], [False, False], 0.0),
])
def test_taken_share(taken: list[bool], started: list[bool], share: float) -> None:
    from fusebench.search.trial_batch import _taken_share

    assert _taken_share(taken, started) == share


def test_a_ctrl_c_in_a_trial_taken_over_still_stops_the_search(tmp_path: Path) -> None:
    """The tell of the interrupted trial fails too (it is FAIL already); the interrupt must not be lost."""
    study = _study(tmp_path, "t/ctrl-c")

    def objective(trial: optuna.Trial) -> float:
        _fail_as_stale(trial)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_search(study, objective, Budget(trials=3, timeout_s=60, seeds=1), poll_s=0.05)


def test_a_ctrl_c_while_the_dropped_trials_seconds_are_written_still_stops_the_search(tmp_path: Path,
                                                                                      monkeypatch) -> None:
    """Review: an interrupt that lands after the objective returned (in the clock's writes) was swallowed."""
    from fusebench.search.clock import SearchClock

    fired: list[int] = []
    real = SearchClock.discard

    def discard(self: SearchClock) -> None:
        if not fired:
            fired.append(1)
            raise KeyboardInterrupt  # SIGINT while the clock is written
        real(self)

    monkeypatch.setattr(SearchClock, "discard", discard)

    def objective(trial: optuna.Trial) -> float:
        if trial.number == 1:
            _fail_as_stale(trial)
        return trial.suggest_float("x", 0.0, 1.0)

    with pytest.raises(KeyboardInterrupt):
        run_search(_study(tmp_path, "t/ctrl-c-late"), objective, Budget(trials=3, timeout_s=60, seeds=1), poll_s=0.05)
    assert fired


class _SamplerBug(ValueError):
    pass


def _sampler_fails_after_each_trial(study: optuna.Study) -> None:
    real = study.sampler.after_trial

    def after_trial(*args) -> None:
        real(*args)
        raise _SamplerBug("a sampler's own error, after the tell")

    study.sampler.after_trial = after_trial  # type: ignore[method-assign]


def test_another_value_error_is_raised_not_taken_for_a_take_over(tmp_path: Path) -> None:
    """Review: any ValueError out of `optimize` whose last trial was no longer RUNNING (here: told COMPLETE,
    then the sampler failed) was swallowed with a false "failed as stale by another process"."""
    study = _study(tmp_path, "t/sampler")
    _sampler_fails_after_each_trial(study)
    with pytest.raises(_SamplerBug):
        run_search(study, lambda t: t.suggest_float("x", 0.0, 1.0), Budget(trials=3, timeout_s=60, seeds=1), poll_s=0.05)


def test_another_value_error_at_a_batched_tell_is_raised(tmp_path: Path) -> None:
    study = _study(tmp_path, "t/sampler-batch")
    _sampler_fails_after_each_trial(study)
    with pytest.raises(_SamplerBug):
        run_batched_search(study, BatchObjective(lambda t: t.suggest_float("x", 0.0, 1.0), lambda ts, xs, ok: list(xs)),
                           Budget(trials=4, timeout_s=60, seeds=1), 2, poll_s=0.05)


def test_the_real_batched_objective_drops_a_trial_taken_over_and_the_run_finishes(tmp_path: Path, synthetic_bundle,
                                                                                  monkeypatch) -> None:
    """Review: the run's batched objective (bench/run/trials.py) writes user attrs on the round's trials as
    it trains; on a trial another process had failed, that write raised out of the round (`fusebench run
    --trial-batch 3`: "concat FAILED: Trial#1 has already finished"). The stand-in for the other process
    fails trial 1 of the first round as it starts training."""
    import fusebench.run.cell as cell
    from fusebench.cli import main

    real, failed = cell.run_batched_search, []

    def with_a_take_over(study, objective, budget, trial_batch, **kw):
        def train(trials, proposals, may_start):
            if not failed:
                failed.append(trials[1].number)
                _fail_as_stale(trials[1])
            return objective.train(trials, proposals, may_start)

        return real(study, BatchObjective(objective.propose, train), budget, trial_batch, **kw)

    monkeypatch.setattr(cell, "run_batched_search", with_a_take_over)
    data, cfg = synthetic_bundle
    monkeypatch.setenv("FUSEBENCH_CONFIG_DIR", str(cfg))
    out = tmp_path / "run"
    assert main(["run", "--datasets", "toy", "--strategies", "concat", "--trials", "3", "--seeds", "1",
                 "--trial-batch", "3", "--data-dir", str(data), "--out", str(out)]) == 0
    assert failed == [1]
    study = optuna.load_study(study_name="toy/concat", storage=open_storage(f"journal:///{out}/optuna.journal"))
    counts = trial_counts(study, 3)
    assert (counts.spent, counts.complete + counts.pruned, counts.failed, counts.retried) == (3, 3, 0, 1)


def test_a_trial_failed_between_the_owners_look_and_its_tell_is_dropped_too(tmp_path: Path, monkeypatch) -> None:
    """Second review: the other process fails the trial just after `settle` found it RUNNING, and the
    objective had returned a value: optuna's tell refuses, and its `finally` raises `AssertionError("Should
    not reach.")` over that ValueError, which crashed the search."""
    import fusebench.search.study as study_module

    real, failed = study_module.not_running, []

    def look_then_fail(study: optuna.Study, trial_id: int) -> bool:
        seen = real(study, trial_id)
        if not failed and study._storage.get_trial(trial_id).number == 1:
            failed.append(trial_id)
            _fail_as_stale(optuna.Trial(study, trial_id))
        return seen

    monkeypatch.setattr(study_module, "not_running", look_then_fail)
    study, _ = run_search(_study(tmp_path, "t/race"), lambda t: t.suggest_float("x", 0.0, 1.0),
                          Budget(trials=3, timeout_s=60, seeds=1), poll_s=0.05)
    counts = trial_counts(study, 3)
    assert failed and (counts.spent, counts.complete, counts.failed, counts.retried) == (3, 3, 0, 1)


def test_a_ctrl_c_after_the_objective_returned_leaves_the_trial_retried_not_spent(tmp_path: Path, monkeypatch) -> None:
    """Second review: a Ctrl-C in `settle` (the clock's commit) of a trial nobody else failed ended it FAIL
    without `interrupted`: counted spent and failed, one completed trial fewer for the strategy."""
    import fusebench.search.study as study_module

    real, fired = study_module.not_running, []

    def interrupted_at_trial_1(study: optuna.Study, trial_id: int) -> bool:
        if not fired and study._storage.get_trial(trial_id).number == 1:
            fired.append(1)
            raise KeyboardInterrupt
        return real(study, trial_id)

    monkeypatch.setattr(study_module, "not_running", interrupted_at_trial_1)
    study = _study(tmp_path, "t/ctrl-c-settle")
    with pytest.raises(KeyboardInterrupt):
        run_search(study, lambda t: t.suggest_float("x", 0.0, 1.0), Budget(trials=3, timeout_s=60, seeds=1), poll_s=0.05)
    study, _ = run_search(study, lambda t: t.suggest_float("x", 0.0, 1.0), Budget(trials=3, timeout_s=60, seeds=1),
                          poll_s=0.05)
    counts = trial_counts(study, 3)
    assert (counts.spent, counts.complete, counts.failed, counts.retried) == (3, 3, 0, 1)


def test_a_ctrl_c_between_a_rounds_training_and_its_tells_leaves_no_trial_running(tmp_path: Path, monkeypatch) -> None:
    """Second review: a Ctrl-C after `train` returned (the round's commit, before the tells) left the round's
    trials RUNNING, so a second search in the same process (a notebook, a test) waited for them for ever."""
    import threading

    import fusebench.search.trial_batch as trial_batch

    real, fired = trial_batch.not_running, []

    def interrupted_once(study: optuna.Study, trial_id: int) -> bool:
        if not fired:
            fired.append(1)
            raise KeyboardInterrupt
        return real(study, trial_id)

    def train(trials, xs, may_start):
        monkeypatch.setattr(trial_batch, "not_running", interrupted_once)
        return list(xs)

    study = _study(tmp_path, "t/batch-ctrl-c")
    with pytest.raises(KeyboardInterrupt):
        run_batched_search(study, BatchObjective(lambda t: t.suggest_float("x", 0.0, 1.0), train),
                           Budget(trials=2, timeout_s=60, seeds=1), 2, poll_s=0.05)
    monkeypatch.setattr(trial_batch, "not_running", real)
    assert [t.user_attrs.get("interrupted") for t in study.trials] == [True, True]
    again = threading.Thread(target=run_batched_search, daemon=True, kwargs={"poll_s": 0.05}, args=(
        study, BatchObjective(lambda t: t.suggest_float("x", 0.0, 1.0), lambda ts, xs, ok: list(xs)),
        Budget(trials=2, timeout_s=60, seeds=1), 2))
    again.start()
    again.join(30)
    assert not again.is_alive(), "the second search waited for the interrupted round's trials"
    assert trial_counts(study, 2).complete == 2


def test_a_claim_failed_between_its_surplus_mark_and_its_tell_ends_the_round(tmp_path: Path, monkeypatch) -> None:
    """Second review: a claim that lost the last slot is told FAIL `surplus`; failed by another process in
    between, that tell raised "Cannot tell a FAIL trial" out of the round."""
    import os
    import socket

    study = _study(tmp_path, "t/surplus")
    real_ask, real_tell, others = study.ask, study.tell, []

    def ask(*args, **kwargs):
        if not others:  # a live process on this host claims the only slot first
            others.append(real_ask())
            others[0].set_user_attr("host", socket.gethostname())
            others[0].set_user_attr("pid", os.getpid())
        return real_ask(*args, **kwargs)

    def tell(trial, *args, **kwargs):
        if trial.user_attrs.get("surplus") and trial.number != others[0].number:
            _fail_as_stale(trial)  # another process acts between the mark and the tell
            real_tell(others[0], 0.5)  # ... and the slot's owner finishes: the budget is spent
        return real_tell(trial, *args, **kwargs)

    monkeypatch.setattr(study, "ask", ask)
    monkeypatch.setattr(study, "tell", tell)
    study, _ = run_batched_search(study, BatchObjective(lambda t: t.suggest_float("x", 0.0, 1.0),
                                                        lambda ts, xs, ok: list(xs)),
                                  Budget(trials=1, timeout_s=60, seeds=1), 2, poll_s=0.05)
    counts = trial_counts(study, 1)
    assert (counts.spent, counts.complete, counts.failed) == (1, 1, 0)


_SUSPENDED_OWNER = suspended_script("t/stall", host="machine-a")  # another host, as the test process sees it


def test_a_suspended_owner_on_another_host_wakes_and_finishes_its_search(tmp_path: Path, monkeypatch) -> None:
    """A real owner process (host `machine-a`, saving its clock every 0.1 s) is SIGSTOPped in a trial; this
    process watches that trial idle for the grace (1 s here) and fails it, as a run resumed on another
    machine does; then the owner is continued. It must finish its budget, the failed trial retried."""
    monkeypatch.setattr(stale, "FOREIGN_GRACE_S", 1.0)
    monkeypatch.setattr(stale, "_watched", {})
    url = f"journal:///{tmp_path}/optuna.journal"
    owner = LoggedPopen([sys.executable, "-c", _SUSPENDED_OWNER, url], tmp_path / "owner.log", cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while True:  # the owner is in a trial and has reported an epoch
            assert owner.poll() is None and time.monotonic() < deadline, owner.output_tail()
            try:
                study = optuna.load_study(study_name="t/stall", storage=open_storage(url))
            except KeyError:
                continue
            if any(t.intermediate_values for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))):
                break
            time.sleep(0.05)
        owner.send_signal(signal.SIGSTOP)
        failed, since = 0, time.monotonic()
        while not failed and time.monotonic() - since < 10:
            failed = stale.fail_stale_running(study)
            time.sleep(0.1)
        assert failed == 1, "the suspended owner's trial is taken for a killed process's"
    finally:
        owner.send_signal(signal.SIGCONT)
    assert owner.wait(60) == 0, owner.output_tail()
    assert "FINISHED" in owner.output_tail() and "Cannot tell" not in owner.output_tail()
    study = optuna.load_study(study_name="t/stall", storage=open_storage(url))
    counts = trial_counts(study, 3)
    assert (counts.spent, counts.complete, counts.retried) == (3, 3, 1)
