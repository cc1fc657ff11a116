"""A disk that fills up during `fusebench run` ends it with exit 2 and a message naming the file and
what to free, never a traceback; nothing written before is lost, and the same command resumes once
there is space (bench/core/diskfull.py, docs/reliability.md).

The full disk is injected at the lowest write call the run makes, `os.fsync` (every run file is
written through `atomic_write_bytes` or the journal's append, both of which fsync before they count
a write as done): from the first fsync of the chosen file on, every fsync fails with ENOSPC, as on a
disk that stays full. tests/test_reliability_diskfull.py does the same on a real 4 MiB tmpfs where
mounting is allowed (root); this test runs everywhere.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import optuna
import pytest

from fusebench.cli import main
from fusebench.results.records import load_records
from fusebench.search.storage import open_storage

REAL_FSYNC = os.fsync


class FullDisk:
    """`os.fsync` of a disk that fills up at the `at`-th fsync of a file whose path contains `target`."""

    def __init__(self, target: str, at: int) -> None:
        self.target, self.at, self.seen, self.full = target, at, 0, False
        self.first: str | None = None  # the file whose write found the disk full first

    def __call__(self, fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        if not self.full and self.target in path:
            self.seen += 1
            self.full = self.seen >= self.at
        if self.full:
            self.first = self.first or path
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        REAL_FSYNC(fd)


@pytest.fixture()
def toy_run(synthetic_bundle, monkeypatch, tmp_path):
    data, cfg = synthetic_bundle
    monkeypatch.setenv("FUSEBENCH_CONFIG_DIR", str(cfg))
    monkeypatch.setenv("FUSEBENCH_CACHE", str(tmp_path / "cache"))  # a cold cache: the encode writes entries
    out = tmp_path / "run"
    return out, ["run", "--suite", "toy", "--strategies", "concat,majority", "--trials", "3", "--seeds", "2",
                 "--data-dir", str(data), "--out", str(out), "-q"]


# (what fills the disk, the file named in the message); the at-th write of that file finds it full
CASES = {
    "results.jsonl": ("results.jsonl", 2, "results.jsonl"),  # concat's records are written, majority's are not
    "run.json": ("run.json", 3, "run.json"),
    "journal": ("optuna.journal", 30, "optuna.journal"),  # in the third of concat's 3 trials (44 journal writes in all)
    # the cache goes on without storing (bench/features/cache.py: "computed but not stored"); the run stops at its
    # next write of its own, run.json after the encode
    "feature cache": ("/features/", 2, "run.json"),
    # a cell's test predictions (written with to_parquet to a .tmp sibling until this case was added: no
    # fsync, no file name in the error, the partial copy left behind)
    "predictions": ("/predictions/", 1, "concat.parquet"),
    # a fitted seed kept for a resume (bench/run/seed_store.py): its predictions, then the entry naming them;
    # the 3rd write is the second seed's predictions, with the first seed stored whole
    "stored seed": ("/partial/", 1, "concat.r0.s1000.parquet"),
    "stored seed entry": ("/partial/", 2, "concat.r0.s1000.json"),
    "second stored seed": ("/partial/", 3, "concat.r0.s1001.parquet"),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.slow
def test_a_full_disk_is_exit_2_naming_the_file_and_a_rerun_resumes(toy_run, monkeypatch, capsys, case):
    out, args = toy_run
    target, at, named = CASES[case]
    disk = FullDisk(target, at)
    monkeypatch.setattr(os, "fsync", disk)
    code = main(args)
    monkeypatch.setattr(os, "fsync", REAL_FSYNC)  # space freed
    err = capsys.readouterr().err
    assert disk.full, f"the disk never filled: {disk.seen} write(s) of {target}"
    assert code == 2, err[-3000:]
    assert "Traceback" not in err
    line = next(ln for ln in err.splitlines() if ln.startswith("fusebench: error: no space left on device"))
    assert named in line and "free there" in line and "Free space" in line and "re-run the same command" in line
    assert ".tmp" not in line  # the file being written, not an atomic write's temporary copy
    # nothing written before the disk filled is lost or torn, and no partial copy takes space
    assert not list(out.rglob("*.tmp")) and not list(Path(os.environ["FUSEBENCH_CACHE"]).rglob(".*.tmp"))
    before = load_records(out / "results.jsonl", strict=True) if (out / "results.jsonl").exists() else []
    if case == "results.jsonl":
        assert {r.strategy for r in before} == {"concat"} and len(before) == 2
    if (out / "run.json").exists():
        json.loads((out / "run.json").read_text())
    if case == "journal":
        study = optuna.load_study(study_name="toy/concat", storage=open_storage(f"journal:///{out / 'optuna.journal'}"))
        assert any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    # fitted seeds stored before the disk filled (bench/run/seed_store.py) are kept, not retrained
    stored = {(b["record"]["strategy"], b["record"]["seed"]): b["record"]["train_seconds"]
              for b in (json.loads(p.read_text()) for p in out.glob("partial/*/*.json"))}
    if case == "second stored seed":
        assert list(stored) == [("concat", 1000)]
    # with space again, the same command finishes and keeps what was done
    assert main(args) == 0
    after = load_records(out / "results.jsonl", strict=True)
    assert sorted((r.strategy, r.seed) for r in after) == [("concat", 1000), ("concat", 1001),
                                                            ("majority", 1000), ("majority", 1001)]
    kept = {(r.strategy, r.seed): r.main_metric for r in before}
    assert all(kept[k] == r.main_metric for r in after if (k := (r.strategy, r.seed)) in kept)
    assert all(stored[k] == r.train_seconds for r in after if (k := (r.strategy, r.seed)) in stored)
    assert not (out / "partial").exists()


def test_other_os_errors_are_not_reported_as_a_full_disk(toy_run, monkeypatch):
    """Only ENOSPC/EDQUOT are mapped: another I/O error still surfaces as itself."""
    _, args = toy_run

    def broken(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(OSError) as info:
        main(args)
    assert info.value.errno == errno.EIO


def test_the_message_without_a_file_name_still_says_what_to_free(monkeypatch, tmp_path):
    """A library's own write (parquet, CSV) can raise ENOSPC naming no file: the message stays whole."""
    from fusebench.core.diskfull import message

    monkeypatch.setenv("FUSEBENCH_CACHE", str(tmp_path / "cache"))
    text = message(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    assert text.startswith("no space left on device. Free space on the filesystems of --out and the cache")
    assert str(tmp_path / "cache") in text and "re-run the same command" in text
    quota = message(OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), str(tmp_path / "x.json")))
    assert quota.startswith(f"the disk quota is exhausted while writing {tmp_path / 'x.json'} (")


def test_a_full_disk_while_handing_a_dataset_to_the_jobs_pool_is_exit_2(toy_run, monkeypatch, capsys, tmp_path):
    """--jobs N saves the prepared dataset for its worker processes in a temporary folder. torch.save to a
    path raises a bare RuntimeError when the disk is full (no errno), which came out as a traceback; the
    save goes through a file object now, so the real ENOSPC reaches the CLI. The disk here is /dev/full."""
    import tempfile

    from fusebench.run import scratch as pool_scratch

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "toy.pt").symlink_to("/dev/full")  # what the pool writes is a device that is always full
    monkeypatch.setattr(pool_scratch.tempfile, "mkdtemp", lambda **_: str(scratch))
    assert pool_scratch.tempfile is tempfile
    _out, argv = toy_run
    assert main([*argv, "--jobs", "2"]) == 2
    err = capsys.readouterr().err
    assert f"no space left on device while writing {scratch / 'toy.pt'}" in err
    assert "Traceback" not in err
