"""The kill tests' child must never block on its own output (tests/killpoint.py, `LoggedPopen`).

A child started with `stderr=PIPE` that nobody reads blocks in write() once it has logged more than
the pipe holds (64 KiB on Linux): it never reaches its kill point and the test waits out its whole
timeout. The first test shows that hazard with the old way of starting the child; the second shows
that `LoggedPopen` (output to a file) lets the same child reach its kill point and keeps its output."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.killpoint import LoggedPopen, kill_at

LOGGED = 256 * 1024  # four times what a Linux pipe holds
# logs LOGGED bytes to stderr, then marks that it got past them (the "kill point"), then waits to be killed
CHILD = (f"import pathlib, sys, time; sys.stderr.write('x' * {LOGGED}); sys.stderr.flush(); "
         "pathlib.Path(sys.argv[1]).touch(); time.sleep(120)")


def _reached(marker):
    return lambda: True if marker.exists() else None


def test_hazard_a_piped_child_that_logs_more_than_the_pipe_holds_never_reaches_its_kill_point(tmp_path):
    marker = tmp_path / "reached"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(marker)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)  # how the kill tests started their children before
    try:
        with pytest.raises(AssertionError, match="kill point never reached"):
            kill_at(proc, _reached(marker), timeout_s=5)
        assert proc.poll() is None and not marker.exists()  # alive, blocked writing into the full pipe
    finally:
        proc.kill()
        proc.communicate(timeout=30)  # drains the pipe, so the killed child is reaped


def test_a_logged_child_reaches_its_kill_point_whatever_it_logs(tmp_path):
    marker = tmp_path / "reached"
    proc = LoggedPopen([sys.executable, "-c", CHILD, str(marker)], tmp_path / "child.log")
    try:
        assert kill_at(proc, _reached(marker), timeout_s=60) is True
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.log.stat().st_size == LOGGED  # nothing lost: the output is there for a failure message
    assert proc.output_tail(10) == "x" * 10


def test_a_logged_child_that_exits_early_is_reported_with_its_output(tmp_path):
    proc = LoggedPopen([sys.executable, "-c", "import sys; sys.exit('boom: the child failed')"], tmp_path / "child.log")
    with pytest.raises(AssertionError, match="before the kill point:\n.*boom: the child failed"):
        kill_at(proc, lambda: None, timeout_s=60)
