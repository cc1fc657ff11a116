"""A run directory moved to another place (`gpu_bundle.sh` tars it on one machine and resumes it on
another) can carry optuna's journal lock: a symlink `optuna.journal.lock` to the journal's *old*
absolute path. optuna's stale-lock grace period stats the link, which fails while it dangles, and
retries without end or sleep: the resumed run on the H100 hung for 3 minutes, every process spinning
on "taking longer than 10.0 seconds to acquire the lock file", until its time box ended it.
`RepairingJournalFileBackend` now removes a lock whose target does not exist when it opens the journal."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPT = r"""
import sys, optuna
from fusebench.search.storage import open_storage
optuna.logging.set_verbosity(optuna.logging.ERROR)
storage = open_storage("journal:///" + sys.argv[1])
study = optuna.create_study(storage=storage, study_name="s")
study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
print("trials", len(study.trials))
"""


def _open_and_search(journal: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", SCRIPT, str(journal)], capture_output=True, text=True, timeout=60)


def test_a_lock_left_pointing_to_the_journals_old_place_does_not_hang_the_resumed_search(tmp_path):
    journal = tmp_path / "moved" / "optuna.journal"
    journal.parent.mkdir()
    journal.touch()
    lock = journal.with_name("optuna.journal.lock")
    os.symlink("//tmp/fusebench-gpu.gone/fusebench-gpu-run/optuna.journal", lock)  # as the H100's tarball held it
    done = _open_and_search(journal)  # before the fix: TimeoutExpired (it never acquires the lock)
    assert done.returncode == 0, done.stderr
    assert "trials 2" in done.stdout
    assert not os.path.lexists(lock)  # released after the search as usual


def test_a_live_lock_of_this_journal_is_left_alone(tmp_path):
    """The rule only drops a dangling link: a lock that points at this journal is another process's."""
    from fusebench.search.journal import drop_dangling_lock

    journal = tmp_path / "optuna.journal"
    journal.touch()
    lock = journal.with_name("optuna.journal.lock")
    os.symlink(str(journal), lock)
    assert drop_dangling_lock(lock) is False and os.path.islink(lock)
    os.unlink(lock)
    assert drop_dangling_lock(lock) is False  # no lock at all
    os.symlink(str(tmp_path / "elsewhere" / "optuna.journal"), lock)
    assert drop_dangling_lock(lock) is True and not os.path.lexists(lock)


def _contend(directory: str, seconds: float, out: Any) -> None:
    """Take and release the journal's lock as optuna does, dropping dangling locks in the way, for
    `seconds`; put (two holders at once, releases of a lock not held, locks left held by nobody)."""
    import logging
    import time

    from fusebench.search.journal import drop_dangling_lock

    logging.disable(logging.WARNING)
    journal = os.path.join(directory, "optuna.journal")
    lock, held = journal + ".lock", os.path.join(directory, "held")
    both = lost = stuck = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        give_up = time.monotonic() + 3.0
        while True:
            try:
                os.symlink(journal, lock)
                break
            except FileExistsError:
                drop_dangling_lock(Path(lock))
                if time.monotonic() > give_up:  # a live lock that nobody holds (optuna waits 30 s, then breaks it)
                    stuck += 1
                    try:
                        os.unlink(lock)
                    except FileNotFoundError:
                        pass
        try:
            os.close(os.open(held, os.O_CREAT | os.O_EXCL))
            os.unlink(held)
        except FileExistsError:
            both += 1
        aside = f"{lock}.{os.getpid()}.{time.monotonic_ns()}.rename"
        try:  # optuna's release
            os.rename(lock, aside)
            os.unlink(aside)
        except OSError:
            lost += 1  # optuna: RuntimeError("Error: did not possess lock")
    out.put((both, lost, stuck))


def _plant(directory: str, stop: Any) -> None:
    """A process that died holding the lock in the run directory's old place, again and again."""
    import time

    lock = os.path.join(directory, "optuna.journal.lock")
    while not stop.is_set():
        try:
            os.symlink("//tmp/fusebench-gpu.gone/fusebench-gpu-run/optuna.journal", lock)
        except FileExistsError:
            pass
        time.sleep(0.001)


@pytest.mark.slow
def test_processes_dropping_a_dangling_lock_at_once_never_remove_a_live_one(tmp_path):
    """Several `--jobs` workers open a resumed run's journal at once. Before: a process that saw the
    dangling lock renamed away the live lock another had taken meanwhile, and put it back after its
    holder had released it: two holders at once, "did not possess lock", and a lock held by nobody."""
    import multiprocessing as mp

    (tmp_path / "optuna.journal").touch()
    ctx = mp.get_context("spawn")
    out, stop = ctx.Queue(), ctx.Event()
    planter = ctx.Process(target=_plant, args=(str(tmp_path), stop))
    workers = [ctx.Process(target=_contend, args=(str(tmp_path), 6.0, out)) for _ in range(4)]
    planter.start()
    for w in workers:
        w.start()
    try:
        results = [out.get(timeout=120) for _ in workers]
    finally:
        stop.set()
        for p in [*workers, planter]:
            p.join(timeout=30)
    both, lost, stuck = (sum(r[k] for r in results) for k in range(3))
    assert (both, lost, stuck) == (0, 0, 0)
