"""results.jsonl faults: torn or foreign lines are kept aside and their cells recomputed (docs/reliability.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fusebench.cli import main
from fusebench.core.errors import DataError
from fusebench.results.records import Record, done_cells, load_records, write_records


def _rec(strategy: str, seed: int | None, status: str = "ok", replicate: int = 0) -> Record:
    rec = Record(dataset="d", task="t", strategy=strategy, family="early", modalities=["a"], seed=seed, status=status)
    return rec if not replicate else Record.from_json({**rec.to_json(), "replicate": replicate})


def test_a_cell_is_done_only_when_all_seeds_are_ok() -> None:
    records = [_rec("a", 1000), _rec("a", 1001), _rec("b", 1000), _rec("c", None, "failed")]
    assert done_cells(records, [1000, 1001]) == {("d", "a")}


def test_torn_line_is_kept_aside_and_skipped(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    write_records(path, [_rec("a", 1000), _rec("a", 1001)])
    lines = path.read_text().splitlines()
    path.write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2])
    records = load_records(path, set_aside=True)
    assert [r.seed for r in records] == [1000]
    assert (tmp_path / "results.jsonl.torn").read_text() == lines[1][: len(lines[1]) // 2] + "\n"
    assert done_cells(records, [1000, 1001]) == set()


@pytest.mark.parametrize("line", ['{"a": 1}', "[1, 2]", '"text"', '{"dataset": "d"}', "{not json"])
def test_report_on_a_line_that_is_not_a_record_is_exit_2(tmp_path: Path, line: str,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    write_records(tmp_path / "results.jsonl", [_rec("a", 1000)])
    with open(tmp_path / "results.jsonl", "a") as fh:
        fh.write(line + "\n")
    with pytest.raises(DataError, match=r"results.jsonl:2"):
        load_records(tmp_path / "results.jsonl", strict=True)
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "results.jsonl:2" in err and "Traceback" not in err


def test_report_on_binary_results_is_exit_2(tmp_path: Path) -> None:
    (tmp_path / "results.jsonl").write_bytes(b"\xff\xfe\x00garbage")
    assert main(["report", str(tmp_path)]) == 2


@pytest.mark.slow
def test_torn_record_on_resume_is_recomputed(synthetic_bundle, monkeypatch, tmp_path: Path) -> None:
    data, cfg = synthetic_bundle
    monkeypatch.setenv("FUSEBENCH_CONFIG_DIR", str(cfg))
    out = tmp_path / "run"
    args = ["run", "--datasets", "toy", "--strategies", "concat,majority", "--size", "small", "--trials", "1",
            "--seeds", "2", "--epochs", "2", "--data-dir", str(data), "--out", str(out)]
    assert main(args) == 0
    path = out / "results.jsonl"
    lines = path.read_text().splitlines()
    concat = [i for i, ln in enumerate(lines) if json.loads(ln)["strategy"] == "concat"]
    torn = lines[concat[-1]][:40]
    lines[concat[-1]] = torn
    path.write_text("\n".join(lines) + "\n")
    assert main(args) == 0
    records = load_records(path, strict=True)
    assert sorted(r.seed for r in records if r.strategy == "concat") == [1000, 1001]
    assert torn in (out / "results.jsonl.torn").read_text()
