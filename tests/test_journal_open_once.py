"""A run opens its optuna journal once per process (`one_open_per_journal`), not once per study.

Opening a journal replays all of it; the standard run re-read its 10 MB journal 321 times (~9 min)
on every resume before training anything. Sharing one storage must not hide what other writers
append, and a journal rewritten since (a torn-record repair writes a new file) must be re-opened.
"""

from __future__ import annotations

import logging

import optuna
import pytest

from fusebench.cli import main
from fusebench.search import journal as journal_module
from fusebench.search.journal import RepairingJournalFileBackend
from fusebench.search.storage import one_open_per_journal, open_storage


@pytest.fixture
def opens(monkeypatch):
    """How many times a journal file was opened (replayed) in this process."""
    count = {"n": 0}
    real_init = RepairingJournalFileBackend.__init__

    def counting_init(self, file_path: str) -> None:
        count["n"] += 1
        real_init(self, file_path)

    monkeypatch.setattr(RepairingJournalFileBackend, "__init__", counting_init)
    return count


def test_inside_the_block_a_journal_is_opened_once_and_outside_every_time(tmp_path, opens):
    url = f"journal:///{tmp_path / 'optuna.journal'}"
    with one_open_per_journal():
        first = open_storage(url)
        assert open_storage(url) is first
        with one_open_per_journal():  # nested: the outer block's storage
            assert open_storage(url) is first
        assert open_storage(url) is first
    assert opens["n"] == 1
    assert open_storage(url) is not open_storage(url)
    assert opens["n"] == 3


def test_the_shared_storage_sees_what_another_writer_appends(tmp_path):
    path = tmp_path / "optuna.journal"
    url = f"journal:///{path}"
    with one_open_per_journal():
        shared = open_storage(url)
        optuna.create_study(study_name="a", storage=shared)
        other = optuna.storages.JournalStorage(RepairingJournalFileBackend(str(path)))  # as another process would
        optuna.create_study(study_name="b", storage=other).optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
        seen = open_storage(url)
        assert seen is shared
        assert sorted(s.study_name for s in seen.get_all_studies()) == ["a", "b"]
        assert len(optuna.load_study(study_name="b", storage=seen).trials) == 2


def test_a_journal_rewritten_by_a_repair_is_opened_afresh(tmp_path, opens, caplog):
    path = tmp_path / "optuna.journal"
    url = f"journal:///{path}"
    with one_open_per_journal():
        first = open_storage(url)
        optuna.create_study(study_name="a", storage=first).optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
        with open(path, "ab") as fh:  # a writer killed mid-record, then another process's open repairs it
            fh.write(b'{"op_code": 4, "worker_id": "x", "stu')
        with caplog.at_level(logging.WARNING, logger=journal_module.__name__):
            journal_module.repair(path)
        assert "torn record" in caplog.text
        again = open_storage(url)
        assert again is not first  # the old one's byte offsets point into the file that was replaced
        assert len(optuna.load_study(study_name="a", storage=again).trials) == 1
    assert opens["n"] == 2


def test_a_prepared_run_opens_its_journal_once(synthetic_bundle, monkeypatch, tmp_path, opens):
    data, cfg = synthetic_bundle
    monkeypatch.setenv("FUSEBENCH_CONFIG_DIR", str(cfg))
    out = tmp_path / "run"
    args = ["run", "--suite", "toy", "--strategies", "concat,logit_mean", "--seeds", "1", "--trials", "1",
            "--replicates", "3", "--data-dir", str(data), "--out", str(out), "--prepare-only", "-q"]
    assert main(args) == 0
    storage = open_storage(f"journal:///{out / 'optuna.journal'}")
    names = sorted(s.study_name for s in storage.get_all_studies())
    assert len(names) == 6, names  # 2 cells x 3 search replicates
    assert opens["n"] == 1 + 1  # the run's one open, and this test's
