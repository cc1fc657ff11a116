"""`scripts/standard_cpu.sh save` / `restore`: the standard run's state travels through git from one
machine to the next (this project's machines keep no files between sessions: stop 16 found run 3's
directory gone), without the locks that would name the old machine's processes and paths."""

from __future__ import annotations

import gzip
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script(verb: str, out: Path, pub: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "STANDARD_CPU_OUT": str(out), "STANDARD_CPU_PUB": str(pub)}
    return subprocess.run(["bash", str(ROOT / "scripts" / "standard_cpu.sh"), verb], env=env,
                          capture_output=True, text=True, timeout=120)


def _run_dir(out: Path) -> None:
    (out / "partial" / "esc50").mkdir(parents=True)
    (out / "run.json").write_text('{"suite": "standard"}')
    (out / "optuna.journal").write_text('{"op_code": 0}\n')
    (out / "results.jsonl").write_text("")
    (out / "partial" / "esc50" / "mbt.r0.s1003.json").write_text("{}")
    (out / ".fusebench.lock").write_text("12345 somehost")
    (out / "plots").mkdir()
    for report in ("leaderboard.md", "leaderboard.csv", "report.html", "plots/esc50-history.png"):
        (out / report).write_text("made again from the records")
    os.symlink("//tmp/elsewhere/optuna.journal", out / "optuna.journal.lock")


def test_save_then_restore_on_another_machine_gives_the_run_back_without_its_locks(tmp_path):
    out, pub = tmp_path / "m1" / "standard4", tmp_path / "pub"
    _run_dir(out)
    saved = _script("save", out, pub)
    assert saved.returncode == 0, saved.stderr
    names = {str(p.relative_to(pub / "run-state")) for p in (pub / "run-state").rglob("*") if not p.is_dir()}
    assert {"optuna.journal.piece.0000.gz", "optuna.journal.sha256", "partial/esc50/mbt.r0.s1003.json"} <= names
    assert "optuna.journal" not in names and not {n for n in names if n.endswith(".lock")}
    assert not {n for n in names if n.startswith(("leaderboard", "report", "plots"))}  # the report is not state
    again = tmp_path / "m2" / "standard4"
    restored = _script("restore", again, pub)
    assert restored.returncode == 0 and "restored the run" in restored.stdout
    for f in ("run.json", "optuna.journal", "results.jsonl", "partial/esc50/mbt.r0.s1003.json"):
        assert (again / f).read_bytes() == (out / f).read_bytes()
    assert not os.path.lexists(again / "optuna.journal.lock") and not (again / "optuna.journal.sha256").exists()
    (again / "results.jsonl").write_text("newer\n")
    assert _script("restore", again, pub).returncode == 0  # a run already there is never overwritten
    assert (again / "results.jsonl").read_text() == "newer\n"


def test_a_state_published_under_a_relative_path_restores(tmp_path):
    """$STANDARD_CPU_PUB defaults to reports/published/standard-cpu, relative to the checkout: the restore
    checked the journal's sha256 from inside the new run directory, where that path named nothing, and
    refused every default restore (the tests above pass absolute paths)."""
    out, pub = tmp_path / "m1" / "standard4", tmp_path / "pub"
    _run_dir(out)
    relative = Path(os.path.relpath(pub, ROOT))  # the script works from the checkout's root
    assert _script("save", out, relative).returncode == 0
    again = tmp_path / "m2" / "standard4"
    restored = _script("restore", again, relative)
    assert restored.returncode == 0, restored.stderr
    assert (again / "optuna.journal").read_bytes() == (out / "optuna.journal").read_bytes()


def test_a_save_rewrites_only_the_journal_pieces_that_grew(tmp_path):
    """The point of a tree over a tarball: git keeps a file once, so a piece of the append-only journal
    that a save has already written must come out byte for byte the same (gzip -n: no name, no time),
    and a cell's predictions likewise; the tarball re-committed the whole run every session."""
    out, pub = tmp_path / "standard4", tmp_path / "pub"
    _run_dir(out)
    (out / "predictions" / "esc50").mkdir(parents=True)
    (out / "predictions" / "esc50" / "concat.parquet").write_bytes(os.urandom(1000))
    head = b"".join(b'{"op_code": 4, "trial_id": %d, "value": 0.5}\n' % i for i in range(150_000))  # > 4 MiB
    (out / "optuna.journal").write_bytes(head)
    assert _script("save", out, pub).returncode == 0
    first = {p.name: p.read_bytes() for p in (pub / "run-state").glob("optuna.journal.piece.*")}
    assert len(first) == 2
    time.sleep(1.1)  # a gzip that stored the time would differ now
    with (out / "optuna.journal").open("ab") as f:
        f.write(b'{"op_code": 5}\n' * 1000)
    assert _script("save", out, pub).returncode == 0
    second = {p.name: p.read_bytes() for p in (pub / "run-state").glob("optuna.journal.piece.*")}
    assert second["optuna.journal.piece.0000.gz"] == first["optuna.journal.piece.0000.gz"]
    assert second["optuna.journal.piece.0001.gz"] != first["optuna.journal.piece.0001.gz"]
    restored = tmp_path / "m2"
    assert _script("restore", restored, pub).returncode == 0
    assert (restored / "optuna.journal").read_bytes() == (out / "optuna.journal").read_bytes()
    assert (restored / "predictions" / "esc50" / "concat.parquet").read_bytes() == (
        out / "predictions" / "esc50" / "concat.parquet").read_bytes()


@pytest.mark.parametrize("damage", ["one record short", "cut short", "missing"])
def test_a_damaged_journal_piece_restores_nothing_and_says_so(tmp_path, damage):
    out, pub = tmp_path / "standard4", tmp_path / "pub"
    _run_dir(out)
    (out / "optuna.journal").write_bytes(os.urandom(3 << 20).hex().encode())  # 6 MiB: two pieces
    assert _script("save", out, pub).returncode == 0
    piece = pub / "run-state" / "optuna.journal.piece.0000.gz"
    if damage == "one record short":  # a whole gzip of other bytes
        piece.write_bytes(gzip.compress(gzip.decompress(piece.read_bytes())[:-1]))
    elif damage == "cut short":
        piece.write_bytes(piece.read_bytes()[:1000])
    else:
        piece.unlink()
    again = tmp_path / "m2"
    bad = _script("restore", again, pub)
    assert bad.returncode == 2 and "optuna.journal.sha256" in bad.stderr
    assert not again.exists() and not (tmp_path / "m2.restoring").exists()


def _save_is_refused_while(sweep: subprocess.Popen[Any], out: Path, pub: Path) -> None:
    """`save` exits 2 and writes nothing while `sweep` (a stand-in for the running sweep) lives; it is killed after."""
    try:
        busy = _script("save", out, pub)
        assert busy.returncode == 2 and "stop it first" in busy.stderr
        assert not (pub / "run-state").exists()
    finally:
        sweep.kill()
        sweep.wait()


def test_save_refuses_while_the_sweep_runs_and_without_a_run(tmp_path):
    out, pub = tmp_path / "standard4", tmp_path / "pub"
    assert _script("save", out, pub).returncode == 2  # no run.json
    _run_dir(out)
    fake = subprocess.Popen(["bash", "-c", f'exec -a "fusebench run --suite standard --device cpu --out {out}" sleep 60'])
    time.sleep(0.5)
    _save_is_refused_while(fake, out, pub)


def test_save_refuses_while_a_run_holds_the_directory_under_another_spelling_of_its_path(tmp_path):
    """The sweep was started with the default relative `runs/standard-cpu`, `save` is called with the
    absolute path (or `./runs/...`): the command-line match missed it and the state of a running sweep
    was tarred. The run's own lock (an flock of RUN/.fusebench.lock, bench/run/rundir.py) names it."""
    import sys

    out, pub = tmp_path / "standard4", tmp_path / "pub"
    _run_dir(out)
    hold = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR); fcntl.flock(fd, fcntl.LOCK_EX); "
            "print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(out / ".fusebench.lock")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    _save_is_refused_while(holder, out, pub)
    assert _script("save", out, pub).returncode == 0  # the lock released: a stopped run saves


def _state(pid: int) -> str:
    """The process's state letter from /proc (T: stopped)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _nice(pid: int) -> int:
    """The process's nice value from /proc (field 19 of stat)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


def _settled(pid: int, stopped: bool) -> str:
    """The state once a signal sent to a process that was running on the other core has landed (polled, 10 s at most)."""
    for _ in range(200):
        if (_state(pid) == "T") == stopped:
            break
        time.sleep(0.05)
    return _state(pid)


def test_pause_stops_the_sweep_and_its_children_and_resume_continues_them(tmp_path):
    """`pause` / `resume` while another heavy job needs the machine, or `nice` to let the sweep run on what
    that job leaves idle. The sweep is found by its run directory's lock (the pid it names, held), its
    workers as its descendants; a stopped process counts no CPU seconds."""
    import sys

    out, pub = tmp_path / "standard4", tmp_path / "pub"
    _run_dir(out)
    assert _script("pause", out, pub).returncode == 2  # the lock is not held: no sweep runs
    assert _script("nice", out, pub).returncode == 2
    sweep = ("import fcntl, os, subprocess, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_TRUNC); "
             "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, f'pid {os.getpid()} on host h since now'.encode()); "
             "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
             "print(child.pid, flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", sweep, str(out / ".fusebench.lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        child = int(holder.stdout.readline())
        paused = _script("pause", out, pub)
        assert paused.returncode == 0, paused.stderr
        assert _settled(holder.pid, True) == "T" and _settled(child, True) == "T"
        assert _script("save", out, pub).returncode == 2  # paused is still running: no save
        resumed = _script("resume", out, pub)
        assert resumed.returncode == 0, resumed.stderr
        assert _settled(holder.pid, False) != "T" and _settled(child, False) != "T"
        niced = _script("nice", out, pub)  # the lighter way: the sweep runs on what the other job leaves idle
        assert niced.returncode == 0, niced.stderr
        assert _nice(holder.pid) == 19 and _nice(child) == 19
        assert f"pids {holder.pid} {child}" in niced.stdout
    finally:
        subprocess.run(["pkill", "-KILL", "-P", str(holder.pid)], check=False)
        holder.kill()
        holder.wait()


def test_the_published_leaderboard_and_status_are_of_the_saved_run():
    """The leaderboard, report and status published beside `run-state/` show exactly the cells the saved run
    finished. Stop 33 saved a run of 26 finished cells beside stop 32's leaderboard and status of 25 (a
    sweep stopped by SIGTERM exits before publishing, and `save` did not publish): the published numbers
    lagged the state they claim to come from."""
    import json

    import pandas as pd

    from fusebench.results.records import done_cells
    from fusebench.run.status import read_run

    pub = ROOT / "reports" / "published" / "standard-cpu"
    run = read_run(pub / "run-state")
    done = done_cells(run.records, run.eval_seeds, run.replicates)
    board = pd.read_csv(pub / "leaderboard.csv")
    assert set(zip(board["dataset"], board["strategy"])) == done
    status = json.loads((pub / "status.json").read_text())
    assert status["cells_done"] == len(done)
    assert {t["dataset"]: t["cells_done"] for t in status["tasks"]} == {
        task: sum(1 for d, _ in done if d == task) for task in run.plan}
    html = (pub / "report.html").read_text()
    assert all(f"{strategy}<" in html or f"{strategy}\"" in html for _, strategy in done)
