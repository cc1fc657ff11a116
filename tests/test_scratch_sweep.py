"""A `--jobs N` pool's scratch folder (the prepared tensors) left by a killed run is removed by the
next pool on this host; the folders of live runs, other hosts and unknown names stay.

Liveness is the folder's lock (bench/run/scratch.py), not the pid in its name: a run in another
pid namespace (a container sharing TMPDIR and the hostname) names a pid that means nothing here.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fusebench.core.processes import pid_alive
from fusebench.run import scratch
from fusebench.run.scratch import PREFIX as SCRATCH_PREFIX
from fusebench.run.scratch import owner_tag as _scratch_owner
from fusebench.run.scratch import sweep as sweep_orphaned_scratch


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _folder(root: Path, name: str, idle_s: float = 0.0) -> Path:
    folder = root / name
    folder.mkdir()
    (folder / "toy.pt").write_bytes(b"x" * 1000)
    then = time.time() - idle_s
    for path in (folder / "toy.pt", folder):
        os.utime(path, (then, then))
    return folder


def test_only_this_hosts_folders_of_dead_processes_are_removed(tmp_path):
    """Folders without a lock file (made before it existed, or being made): by name, pid and age."""
    idle = scratch.UNLOCKED_IDLE_S + 5
    dead = _folder(tmp_path, f"{SCRATCH_PREFIX}{_scratch_owner(_dead_pid())}abc123", idle)
    just_made = _folder(tmp_path, f"{SCRATCH_PREFIX}{_scratch_owner(_dead_pid())}jkl012")  # its lock comes next
    live = _folder(tmp_path, f"{SCRATCH_PREFIX}{_scratch_owner(os.getpid())}def456", idle)
    host = socket.gethostname().replace("-", "_")
    other_host = _folder(tmp_path, f"{SCRATCH_PREFIX}not{host}-{_dead_pid()}-ghi789", idle)
    old_style = _folder(tmp_path, f"{SCRATCH_PREFIX}01alhgi8", idle)  # made before folders named their process
    assert sweep_orphaned_scratch(tmp_path) == [dead]
    assert not dead.exists()
    assert live.is_dir() and other_host.is_dir() and old_style.is_dir() and just_made.is_dir()


_OWNER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from fusebench.run import scratch
    folder, fd = scratch.create(Path(sys.argv[1]))
    (folder / "toy.pt").write_bytes(b"x" * 1000)
    print(folder, flush=True)
    if sys.argv[2] == "live":
        time.sleep(120)  # holds the lock until the test kills it
""")


def _owner(root: Path, how: str) -> tuple[subprocess.Popen, Path]:
    proc = subprocess.Popen([sys.executable, "-c", _OWNER, str(root), how], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, Path(proc.stdout.readline().strip())


def test_a_live_runs_folder_stays_whatever_pid_its_name_carries(tmp_path):
    """A run in another pid namespace (a container sharing TMPDIR and the hostname) names a pid that
    is dead here; it is alive, and holds its folder's lock, so its folder stays."""
    proc, made = _owner(tmp_path, "live")
    try:
        dead = _dead_pid()
        seen_here = made.with_name(f"{SCRATCH_PREFIX}{_scratch_owner(dead)}{made.name.rsplit('-', 1)[1]}")
        made.rename(seen_here)  # the same folder, as this pid namespace would read its name
        assert not pid_alive(dead)
        assert sweep_orphaned_scratch(tmp_path) == []
        assert (seen_here / "toy.pt").is_file()
    finally:
        proc.kill()
        proc.wait()
    assert sweep_orphaned_scratch(tmp_path) == [seen_here]  # its owner gone: the lock is free


def test_a_killed_runs_folder_goes_even_when_its_pid_was_reused(tmp_path):
    proc, made = _owner(tmp_path, "exit")  # leaves without removing it, as kill -9 would
    proc.wait()
    reused = made.with_name(f"{SCRATCH_PREFIX}{_scratch_owner(os.getpid())}{made.name.rsplit('-', 1)[1]}")
    made.rename(reused)  # its pid now names a live process (this one)
    assert sweep_orphaned_scratch(tmp_path) == [reused]
    assert not reused.exists()


def test_a_pool_releases_its_folder(tmp_path):
    folder, fd = scratch.create(tmp_path)
    assert sweep_orphaned_scratch(tmp_path) == [] and folder.is_dir()  # our own, locked
    scratch.release(folder, fd)
    assert not folder.exists()


def test_a_hostname_with_glob_or_path_characters_names_only_its_own_folders(tmp_path, monkeypatch):
    """`node[1]` as a glob matched host `node1`'s folders, and read a pid out of the wrong place
    in their names; a `/` made the folder name a path into a missing directory."""
    dead = str(_dead_pid())
    other = _folder(tmp_path, f"{SCRATCH_PREFIX}node1-12{dead}-abc123", scratch.UNLOCKED_IDLE_S + 5)
    monkeypatch.setattr(socket, "gethostname", lambda: "node[1]")
    assert sweep_orphaned_scratch(tmp_path) == []
    assert other.is_dir()
    monkeypatch.setattr(socket, "gethostname", lambda: "rack/node-2")
    folder, fd = scratch.create(tmp_path)
    assert folder.parent == tmp_path and folder.name.startswith(f"{SCRATCH_PREFIX}rack_node_2-{os.getpid()}-")
    scratch.release(folder, fd)


@pytest.mark.slow
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


_PID_AT = textwrap.dedent("""
    # pid 1 of a new pid namespace: fork until the next child gets pid TARGET, which runs the command
    import os, sys
    target, argv = int(sys.argv[1]), sys.argv[2:]
    while True:
        pid = os.fork()
        if pid == 0:
            if os.getpid() == target:
                os.execv(argv[0], argv)
            os._exit(0)
        status = os.waitpid(pid, 0)[1]
        if pid >= target:
            sys.exit(os.waitstatus_to_exitcode(status) if pid == target else 99)
""")


def _user_pid_namespaces() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-Urp", "--fork", "--kill-child", "true"], capture_output=True,
                          check=False).returncode == 0


@pytest.mark.slow
def test_a_run_in_another_pid_namespace_keeps_its_folder(synthetic_bundle, tmp_path):
    """The real case: `fusebench run --jobs 2` in its own pid namespace (as in a container sharing
    TMPDIR and the hostname), as a pid that no process has here; a pool here sweeps meanwhile."""
    if not _user_pid_namespaces():
        pytest.skip("unprivileged user and pid namespaces (unshare -Urp) are not allowed here")
    data, cfg = synthetic_bundle
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    target = next(p for p in range(300, 30000) if not pid_alive(p))
    env = {**os.environ, "TMPDIR": str(tmp), "FUSEBENCH_CONFIG_DIR": str(cfg), "FUSEBENCH_DATA": str(data),
           "FUSEBENCH_TRAIN_THREADS": "1", "FUSEBENCH_CACHE": str(tmp_path / "cache")}
    run = [sys.executable, "-m", "fusebench", "run", "--suite", "toy", "--strategies", "concat,majority", "--jobs", "2",
           "--trials", "3", "--seeds", "2", "--epochs", "30", "--out", str(tmp_path / "run"), "-q"]
    there = subprocess.Popen(["unshare", "-Urp", "--fork", "--kill-child", sys.executable, "-c", _PID_AT, str(target), *run],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and there.poll() is None and not list(tmp.glob(f"{SCRATCH_PREFIX}*/*.pt")):
            time.sleep(0.05)
        folders = list(tmp.glob(f"{SCRATCH_PREFIX}*"))
        assert len(folders) == 1 and f"-{target}-" in folders[0].name, (folders, there.poll())
        assert not pid_alive(target)  # its name's pid means nothing here
        assert sweep_orphaned_scratch(tmp) == []
        assert folders[0].is_dir()
        _, err = there.communicate(timeout=600)
    finally:
        if there.poll() is None:
            there.kill()  # --kill-child: the namespace goes with it
            there.wait()
    assert there.returncode == 0, err[-3000:]
    assert list(tmp.glob(f"{SCRATCH_PREFIX}*")) == []
