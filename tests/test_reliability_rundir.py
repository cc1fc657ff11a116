"""Run directory: one writer, one identity; compare refuses boards it cannot compare (docs/reliability.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from fusebench.cli import main
from fusebench.core.errors import UsageError
from fusebench.reports.compare import compare, load_board
from fusebench.run.rundir import RunDirLock

REPO = Path(__file__).resolve().parent.parent


def test_second_writer_gets_exit_2_naming_the_holder(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys,time; from pathlib import Path; from fusebench.run.rundir import RunDirLock\n"
         f"l=RunDirLock(Path({str(tmp_path)!r})).__enter__(); print('held', flush=True); time.sleep(60)"],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UsageError, match=f"pid {holder.pid} on host"):
            RunDirLock(tmp_path).__enter__()
    finally:
        holder.kill()
        holder.wait()
    with RunDirLock(tmp_path):  # kill -9 of the holder frees the lock: no stale lock to clean up
        pass


@pytest.mark.parametrize("kind", ["file", "unwritable"])
def test_bad_out_is_exit_2(tmp_path: Path, kind: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    if kind == "file":
        out.write_text("x")
    else:
        if os.geteuid() == 0:
            blocker = tmp_path / "blocker"
            blocker.write_text("x")
            out = blocker / "sub"  # a path under a file cannot be created, even by root
        else:
            tmp_path.chmod(0o500)
    try:
        assert main(["run", "--datasets", "imdb", "--strategies", "concat", "--out", str(out)]) == 2
    finally:
        tmp_path.chmod(0o700)
    err = capsys.readouterr().err
    assert "--out" in err and "Traceback" not in err


def _toy_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["run", "--datasets", "toy", "--strategies", "majority", "--size", "small", "--trials", "1", "--seeds", "2",
            "--data-dir", str(data), "--out", str(out), *extra]


def test_resume_with_another_identity_is_refused(synthetic_bundle, monkeypatch, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    data, cfg = synthetic_bundle
    monkeypatch.setenv("FUSEBENCH_CONFIG_DIR", str(cfg))
    out = tmp_path / "run"
    assert main(_toy_args(data, out)) == 0
    meta = json.loads((out / "run.json").read_text())
    assert meta["identity"]["suite"] == "custom" and meta["identity"]["data_fingerprints"]["toy"]
    board = pd.read_csv(out / "leaderboard.csv")
    assert set(board["config_hash"]) == {meta["identity"]["config_hash"]}
    assert set(board["data_fingerprint"]) == {meta["identity"]["data_fingerprints"]["toy"]}
    assert main(_toy_args(data, out)) == 0  # same identity: resumes (nothing to do)
    capsys.readouterr()
    assert main(_toy_args(data, out, "--seeds", "3")) == 2
    err = capsys.readouterr().err
    assert "seeds: 2 → 3" in err and "--new-run" in err
    assert main(["run", "--suite", "toy", "--data-dir", str(data), "--out", str(out)]) == 2
    assert "suite 'custom' → 'toy'" in capsys.readouterr().err
    assert main(_toy_args(data, out, "--seeds", "3", "--new-run")) == 0
    assert json.loads((tmp_path / "run.1" / "run.json").read_text())["config"]["suite"]["seeds"] == 3
    assert json.loads((out / "run.json").read_text())["config"]["suite"]["seeds"] == 2  # untouched


def test_resume_on_changed_data_is_refused(synthetic_bundle, monkeypatch, tmp_path: Path) -> None:
    data, cfg = synthetic_bundle
    monkeypatch.setenv("FUSEBENCH_CONFIG_DIR", str(cfg))
    out = tmp_path / "run"
    assert main(_toy_args(data, out)) == 0
    df = pd.read_parquet(data / "toy" / "toy_test.parquet")
    df.iloc[0, df.columns.get_loc("text")] = "changed words"
    df.to_parquet(data / "toy" / "toy_test.parquet")
    (out / "results.jsonl").unlink()  # as if the first run was killed before its records: the data is read again
    with pytest.raises(UsageError, match="data fingerprint"):
        from fusebench.cli import _cmd_run, _parser
        _cmd_run(_parser().parse_args(_toy_args(data, out)))


def _board(rows: list[tuple[str, str, float, str]]) -> pd.DataFrame:
    return pd.DataFrame([{"dataset": d, "strategy": s, "mean": m, "std": 0.01, "data_fingerprint": f}
                         for d, s, m, f in rows])


def test_compare_refuses_different_data_and_disjoint_runs() -> None:
    with pytest.raises(UsageError, match="different data"):
        compare(_board([("a", "x", 0.8, "f1")]), _board([("a", "x", 0.8, "f2")]), 0.02)
    with pytest.raises(UsageError, match="share no"):
        compare(_board([("a", "x", 0.8, "f1")]), _board([("b", "y", 0.8, "f1")]), 0.02)
    assert compare(_board([("a", "x", 0.8, "f1")]), _board([("a", "x", 0.8, "f1")]), 0.02).compared == 1


@pytest.mark.parametrize("content", [b"", b"\x00\xff\xfe\x01binary\x00", b"just,one\n"])
def test_compare_on_empty_or_binary_csv_is_exit_2(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "leaderboard.csv"
    bad.write_bytes(content)
    with pytest.raises(UsageError, match="leaderboard"):
        load_board(bad)
    good = tmp_path / "good.csv"
    _board([("a", "x", 0.8, "f")]).to_csv(good, index=False)
    assert main(["compare", str(good), str(bad)]) == 2
