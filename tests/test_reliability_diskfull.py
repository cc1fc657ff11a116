"""Disk full during a run: what was finished stays readable, and a rerun with space completes (docs/reliability.md).

Mounts a small tmpfs, which needs root and a kernel that allows it; elsewhere the test is skipped
with the reason.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from fusebench.results.records import load_records
from fusebench.search.storage import open_storage

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture()
def small_disk(tmp_path: Path):
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(mount: Path, leave: int) -> Path:
    """Fill the disk until only about `leave` bytes are free."""
    filler = mount / "filler"
    st = os.statvfs(mount)
    free = st.f_bavail * st.f_frsize
    with open(filler, "wb") as fh:
        fh.write(b"\0" * max(0, free - leave))
    return filler


@pytest.mark.slow
def test_disk_full_keeps_finished_work_and_a_rerun_completes(small_disk: Path, synthetic_bundle) -> None:
    data, cfg = synthetic_bundle
    env = {**os.environ, "FUSEBENCH_CONFIG_DIR": str(cfg)}
    out = small_disk / "run"
    args = [sys.executable, "-m", "fusebench", "run", "--datasets", "toy", "--strategies", "majority,concat,logit_mean",
            "--size", "small", "--trials", "3", "--seeds", "2", "--epochs", "3", "--data-dir", str(data), "--out", str(out)]
    filler = _fill(small_disk, 24_000)
    first = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode != 0, "the disk was meant to fill up during the run"
    # what was written is readable: every results line a whole record, the journal opens
    records = load_records(out / "results.jsonl", set_aside=True) if (out / "results.jsonl").exists() else []
    assert all(r.status in ("ok", "failed") for r in records)
    if (out / "optuna.journal").exists():
        storage = open_storage(f"journal:///{out / 'optuna.journal'}")
        for s in optuna.get_all_study_names(storage):
            optuna.load_study(study_name=s, storage=storage).get_trials()
    filler.unlink()
    second = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    done = load_records(out / "results.jsonl", strict=True)
    assert sorted((r.strategy, r.seed) for r in done if r.status == "ok") == [
        (s, seed) for s in ("concat", "logit_mean", "majority") for seed in (1000, 1001)]
