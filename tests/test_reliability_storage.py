"""Optuna storage faults: torn journal records, bad storage URLs (docs/reliability.md)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from fusebench.core.errors import UsageError
from fusebench.search.storage import open_storage

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _study(path: Path, name: str = "s") -> optuna.Study:
    return optuna.create_study(study_name=name, storage=open_storage(f"journal:///{path}"), load_if_exists=True)


def _fill(study: optuna.Study, n: int) -> None:
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=n)


def _complete(study: optuna.Study) -> int:
    return len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)))


def test_journal_torn_tail_is_set_aside_and_never_appended_onto(tmp_path: Path) -> None:
    path = tmp_path / "optuna.journal"
    _fill(_study(path), 3)
    _fill(_study(path, "other"), 2)
    whole = path.read_bytes()
    with open(path, "ab") as fh:  # a crash (or a full disk) in the middle of an append
        fh.write(b'{"op_code":5,"worker_id":"x","trial_id":')
    study = _study(path)
    assert _complete(study) == 3  # finished trials are kept
    _fill(study, 2)  # appends after the torn record must not land on it
    assert _complete(_study(path)) == 5
    assert _complete(_study(path, "other")) == 2
    assert path.read_bytes().startswith(whole)
    aside = list(tmp_path.glob("optuna.journal.torn-*"))
    assert len(aside) == 1 and b'"trial_id":' in aside[0].read_bytes()  # kept, not erased


def test_journal_torn_record_glued_to_a_later_one_is_salvaged(tmp_path: Path) -> None:
    """What an older writer left: a partial line with the next whole record appended onto it."""
    path = tmp_path / "optuna.journal"
    _fill(_study(path), 2)
    lines = path.read_bytes().splitlines(keepends=True)
    last = lines[-1]
    path.write_bytes(b"".join(lines[:-1]) + b'{"op_code":5,"wor' + last)
    study = _study(path)
    assert _complete(study) == 2
    _fill(study, 1)
    assert _complete(_study(path)) == 3


def test_journal_append_cuts_a_partial_tail_written_after_open(tmp_path: Path) -> None:
    path = tmp_path / "optuna.journal"
    study = _study(path)
    _fill(study, 1)
    with open(path, "ab") as fh:  # another process died mid-append while this one is running
        fh.write(b'{"op_code":4,"wor')
    _fill(study, 2)
    assert _complete(_study(path)) == 3


def test_worker_on_torn_journal_is_clean(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fusebench.cli import main

    path = tmp_path / "optuna.journal"
    _fill(_study(path, "ds/none"), 1)
    with open(path, "ab") as fh:
        fh.write(b'{"op_co')
    code = main(["worker", "--study", "ds/missing", "--storage", f"journal:///{path}"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "ds/missing" in err


@pytest.mark.parametrize("make", ["missing_dir", "directory"])
def test_bad_sqlite_storage_is_usage_error(tmp_path: Path, make: str) -> None:
    target = tmp_path / "nope" / "x.db" if make == "missing_dir" else tmp_path
    with pytest.raises(UsageError, match=str(target.parent if make == "missing_dir" else target)):
        open_storage(f"sqlite:///{target}")


def test_journal_storage_in_unwritable_place_is_usage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UsageError, match="journal"):
        open_storage(f"journal:///{blocker}/sub/optuna.journal")
