"""Opening a journal checks it for torn records without optuna's lock; it repairs under the lock.

On an H200 with 14 cell processes, each open of the run's 40 MB journal held optuna's journal lock
while it parsed the whole file (11 s on this CPU), so the processes waited ~50 s for each other at
every start and every cell that opened it later stopped all the others' appends ("It is taking
longer than 10.0 seconds to acquire the lock file", 60 times in a 235 s call).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import optuna
from hypothesis import given, settings
from hypothesis import strategies as st
from optuna.storages.journal import JournalFileSymlinkLock
from optuna.storages.journal._file import get_lock_file

from fusebench.search.journal import RepairingJournalFileBackend, _has_torn, repair

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _journal(path: Path, trials: int = 3) -> None:
    storage = optuna.storages.JournalStorage(RepairingJournalFileBackend(str(path)))
    optuna.create_study(study_name="s", storage=storage).optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=trials)


def _open_in_thread(path: Path) -> threading.Thread:
    def open_and_read() -> None:
        storage = optuna.storages.JournalStorage(RepairingJournalFileBackend(str(path)))
        storage.get_all_studies()

    opener = threading.Thread(target=open_and_read, daemon=True)
    opener.start()
    return opener


def test_a_whole_journal_opens_while_another_process_holds_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "optuna.journal"
    _journal(path)
    with get_lock_file(JournalFileSymlinkLock(str(path))):  # another process appending, or checking
        opener = _open_in_thread(path)
        opener.join(timeout=5)
        assert not opener.is_alive(), "opening a journal without torn records waited for optuna's lock"


def test_a_torn_journal_is_repaired_under_the_lock_once_it_is_free(tmp_path: Path) -> None:
    path = tmp_path / "optuna.journal"
    _journal(path)
    whole = path.read_bytes()
    with open(path, "ab") as fh:
        fh.write(b'{"op_code":5,"worker_id":"x","trial_id":')
    with get_lock_file(JournalFileSymlinkLock(str(path))):
        opener = _open_in_thread(path)
        opener.join(timeout=2)
        assert opener.is_alive(), "a torn journal was rewritten while another process held the lock"
        assert path.read_bytes().startswith(whole) and not path.read_bytes().endswith(b"\n")
    opener.join(timeout=30)
    assert not opener.is_alive()
    assert path.read_bytes() == whole
    assert len(list(tmp_path.glob("optuna.journal.torn-*"))) == 1


_operation = st.fixed_dictionaries({"op_code": st.integers(0, 9), "worker_id": st.text(max_size=8)},
                                   optional={"value": st.floats(allow_nan=False), "name": st.text(max_size=12)})
_damage = st.sampled_from(["whole", "truncated", "glued", "blank", "number", "list", "no_op_code", "two", "bare_cr"])


def _line(op: dict, damage: str, later: dict) -> bytes:
    text = json.dumps(op, separators=(",", ":")).encode()
    return {
        "whole": text,
        "truncated": text[: max(1, len(text) // 2)],
        "glued": text[: max(1, len(text) // 2)] + json.dumps(later).encode(),
        "blank": b"",
        "number": b"17",
        "list": b"[1,2]",
        "no_op_code": b'{"worker_id":"x"}',
        "two": text + b"," + text,
        "bare_cr": text + b"\r" + text,  # found by a reviewer: bytes.splitlines ends a line at a bare \r, repair does not
    }[damage]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_operation, _damage, _operation), max_size=12), st.booleans())
def test_the_unlocked_check_finds_exactly_what_repair_sets_aside(tmp_path_factory, lines, newline_at_end) -> None:
    data = b"\n".join(_line(op, damage, later) for op, damage, later in lines)
    if lines and newline_at_end:
        data += b"\n"
    path = tmp_path_factory.mktemp("journal") / "optuna.journal"
    path.write_bytes(data)
    found = _has_torn(data)
    assert found == (repair(path) > 0)
    assert not _has_torn(path.read_bytes())  # what repair leaves is whole


def test_a_report_is_not_fsynced_and_a_state_change_is(tmp_path, monkeypatch):
    """The per-epoch reports skip the fsync (~1.5 ms each under the lock); every other operation keeps it,
    and its fsync makes the reports before it durable too."""
    from optuna.storages.journal._storage import JournalOperation

    from fusebench.search import journal as journal_module

    assert JournalOperation.SET_TRIAL_INTERMEDIATE_VALUE == journal_module.INTERMEDIATE_VALUE
    storage = optuna.storages.JournalStorage(RepairingJournalFileBackend(str(tmp_path / "optuna.journal")))
    study = optuna.create_study(study_name="s", storage=storage)
    trial = study.ask()
    synced: list[int] = []
    real_fsync = journal_module.os.fsync
    monkeypatch.setattr(journal_module.os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    for epoch in range(5):
        trial.report(0.1 * epoch, epoch)
    assert synced == []
    study.tell(trial, 0.5)
    assert len(synced) == 1
    assert optuna.load_study(study_name="s", storage=storage).trials[0].intermediate_values == {
        e: 0.1 * e for e in range(5)}
