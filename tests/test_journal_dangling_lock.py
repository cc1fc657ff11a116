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
