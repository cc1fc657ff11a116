"""Children die with their parent; no pickle is left in a run directory (docs/reliability.md)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def _cmdline(pid: int) -> bytes:
    """The command line of `pid`; empty when it has exited since it was listed (a short-lived child
    such as the `git` of the provenance envelope)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
def test_jobs_workers_die_after_kill_9_of_the_parent(synthetic_bundle, tmp_path: Path) -> None:
    data, cfg = synthetic_bundle
    out = tmp_path / "run"
    env = {**os.environ, "FUSEBENCH_CONFIG_DIR": str(cfg)}
    proc = subprocess.Popen([sys.executable, "-m", "fusebench", "run", "--datasets", "toy", "--strategies",
                             "concat,logit_mean,unimodal", "--size", "small", "--trials", "50", "--seeds", "2",
                             "--epochs", "30", "--jobs", "2", "--data-dir", str(data), "--out", str(out)],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        workers: list[int] = []
        while time.monotonic() < deadline and proc.poll() is None:
            # spawn's resource tracker is a child too; the pool's workers run the spawn main
            workers = [c for c in _children(proc.pid) if b"spawn_main" in _cmdline(c)]
            if len(workers) >= 2 and (out / "optuna.journal").is_file() and (out / "optuna.journal").stat().st_size:
                break
            time.sleep(0.5)
        assert proc.poll() is None and len(workers) >= 2, "the run ended or started no workers"
        assert not list(out.rglob("*.pt")), "a pickle of the prepared data was written into the run directory"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(_alive(w) for w in workers):
            time.sleep(0.5)
        left = [w for w in workers if _alive(w)]
        for w in left:
            os.kill(w, signal.SIGKILL)
        assert not left, f"workers {left} kept running after their parent was killed"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
