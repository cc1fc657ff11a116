"""A `--jobs N` pool's scratch folder (the prepared tensors) left by a killed run is removed by the
next pool on this host; the folders of live runs, other hosts and unknown names stay."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from fusebench.run.parallel import SCRATCH_PREFIX, _scratch_owner, sweep_orphaned_scratch


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _folder(root: Path, name: str) -> Path:
    folder = root / name
    folder.mkdir()
    (folder / "toy.pt").write_bytes(b"x" * 1000)
    return folder


def test_only_this_hosts_folders_of_dead_processes_are_removed(tmp_path):
    dead = _folder(tmp_path, f"{SCRATCH_PREFIX}{_scratch_owner(_dead_pid())}abc123")
    live = _folder(tmp_path, f"{SCRATCH_PREFIX}{_scratch_owner(os.getpid())}def456")
    host = socket.gethostname().replace("-", "_")
    other_host = _folder(tmp_path, f"{SCRATCH_PREFIX}not{host}-{_dead_pid()}-ghi789")
    old_style = _folder(tmp_path, f"{SCRATCH_PREFIX}01alhgi8")  # made before folders named their process
    assert sweep_orphaned_scratch(tmp_path) == [dead]
    assert not dead.exists()
    assert live.is_dir() and other_host.is_dir() and old_style.is_dir()


def test_a_run_killed_with_sigkill_leaves_its_folder_and_the_next_run_removes_it(synthetic_bundle, tmp_path):
    data, cfg = synthetic_bundle
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch), "FUSEBENCH_CONFIG_DIR": str(cfg), "FUSEBENCH_DATA": str(data),
           "FUSEBENCH_TRAIN_THREADS": "1", "FUSEBENCH_CACHE": str(tmp_path / "cache")}
    argv = [sys.executable, "-m", "fusebench", "run", "--suite", "toy", "--strategies", "concat,majority", "--jobs", "2",
            "--trials", "3", "--seeds", "2", "--epochs", "30", "--out", str(tmp_path / "run"), "-q"]
    first = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not list(scratch.glob(f"{SCRATCH_PREFIX}*/*.pt")):
        time.sleep(0.05)
    left = list(scratch.glob(f"{SCRATCH_PREFIX}*"))
    assert len(left) == 1 and f"-{first.pid}-" in left[0].name, left
    first.send_signal(signal.SIGKILL)
    first.wait()
    time.sleep(2)  # its workers see the parent gone and exit (bench/run/parallel.py _watch_parent)
    assert left[0].is_dir()  # kill -9: nothing could clean up
    again = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert again.returncode == 0, again.stderr[-3000:]
    assert list(scratch.glob(f"{SCRATCH_PREFIX}*")) == []  # the orphan swept, the new run's own removed
