"""`fusebench forget RUN DATASET/STRATEGY`: a forgotten cell is searched and evaluated again by the next
`run` into the same directory, every other cell is left as it was, and a name that is not in the run,
or a run that a live process holds, changes nothing (exit 2)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from fusebench.results.records import load_records
from fusebench.run import seed_store
from fusebench.run.rundir import RunDirLock
from fusebench.run.status import strategy_code
from fusebench.search.storage import default_url, open_storage
from tests.test_seed_store_resume import _args, stop_after_storing


def _studies(out: Path) -> set[str]:
    return {s.study_name for s in open_storage(default_url(out), heartbeat=False).get_all_studies()}


def _run(synthetic_bundle, out: Path, monkeypatch, strategies: str = "concat,early_sum") -> list[str]:
    data, cfg = synthetic_bundle
    monkeypatch.setenv("FUSEBENCH_CONFIG_DIR", str(cfg))
    return [*_args(data, out, strategies, 2), "--epochs", "8"]  # the last --epochs counts: short fits


@pytest.mark.slow
def test_a_forgotten_cell_is_searched_again_and_the_others_are_kept(synthetic_bundle, tmp_path: Path, monkeypatch,
                                                                    capsys) -> None:
    from fusebench.cli import main

    out = tmp_path / "run"
    args = _run(synthetic_bundle, out, monkeypatch)
    assert main(args) == 0
    before = {r.strategy: r for r in load_records(out / "results.jsonl")}
    assert {s: r.code_id for s, r in before.items()} == {s: strategy_code(s) for s in before}  # which code scored it
    kept_predictions = (out / "predictions" / "toy" / "early_sum.parquet").read_bytes()
    assert {"toy/concat", "toy/concat/r1", "toy/early_sum", "toy/early_sum/r1"} <= _studies(out)
    assert (out / "history" / "toy" / "concat@r1.csv").is_file()

    capsys.readouterr()
    assert main(["forget", str(out), "toy/concat"]) == 0
    said = capsys.readouterr().out
    assert "forgot toy/concat: 8 record(s); studies toy/concat, toy/concat/r1" in said, said
    assert {r.strategy for r in load_records(out / "results.jsonl")} == {"early_sum"}
    assert not (out / "predictions" / "toy" / "concat.parquet").exists()
    assert not list((out / "history" / "toy").glob("concat*.csv"))
    assert not {"toy/concat", "toy/concat/r1"} & _studies(out)
    assert {"toy/early_sum", "toy/early_sum/r1"} <= _studies(out)

    assert main(args) == 0
    after = load_records(out / "results.jsonl")
    assert sorted(r.strategy for r in after) == ["concat"] * 8 + ["early_sum"] * 8
    study = optuna.load_study(study_name="toy/concat", storage=open_storage(default_url(out), heartbeat=False))
    assert len(study.trials) == 2  # a new search of the budget's 2 trials, not the old study's 2 + 2
    assert (out / "predictions" / "toy" / "early_sum.parquet").read_bytes() == kept_predictions
    again = {r.strategy: r for r in after if r.strategy == "early_sum"}
    assert again["early_sum"].to_json() == before["early_sum"].to_json()  # not retrained


@pytest.mark.slow
def test_forget_removes_the_stored_seeds_of_an_unfinished_cell(synthetic_bundle, tmp_path: Path, monkeypatch) -> None:
    from fusebench.cli import main

    out = tmp_path / "run"
    args = _run(synthetic_bundle, out, monkeypatch, "concat")
    save = stop_after_storing(monkeypatch, 2)
    main(args)
    assert seed_store.SeedStore(out, "toy", "concat").count() == 2
    monkeypatch.setattr(seed_store.SeedStore, "save", save)
    assert main(["forget", str(out), "toy/concat"]) == 0
    assert seed_store.SeedStore(out, "toy", "concat").count() == 0
    assert not (out / "partial").exists()
    assert main(args) == 0
    assert len([r for r in load_records(out / "results.jsonl") if r.status == "ok"]) == 8


@pytest.mark.slow
def test_an_unknown_cell_or_a_held_run_changes_nothing(synthetic_bundle, tmp_path: Path, monkeypatch, capsys) -> None:
    from fusebench.cli import main

    out = tmp_path / "run"
    assert main(_run(synthetic_bundle, out, monkeypatch, "concat")) == 0
    results, studies = (out / "results.jsonl").read_bytes(), _studies(out)

    capsys.readouterr()
    assert main(["forget", str(out), "toy/concat", "toy/cancat"]) == 2
    err = capsys.readouterr().err
    assert "no records or study of toy/cancat" in err and "toy/concat" in err, err
    assert main(["forget", str(out), "concat"]) == 2
    assert "expected DATASET/STRATEGY" in capsys.readouterr().err
    with RunDirLock(out):
        assert main(["forget", str(out), "toy/concat"]) == 2
    assert "is in use by" in capsys.readouterr().err
    assert (out / "results.jsonl").read_bytes() == results and _studies(out) == studies


@pytest.mark.slow
def test_forget_on_a_copy_of_a_run_edits_the_copy_not_the_original(synthetic_bundle, tmp_path: Path, monkeypatch) -> None:
    """A restored or copied run directory keeps the run.json of the original, whose `storage` names the
    original's journal. `forget` on the copy followed it and deleted the study of the live original
    (stop 29: the standard run's `esc50/lmf` failed with 'Record does not exist.' mid-search); the run
    directory's own journal is the run's storage."""
    import shutil

    from fusebench.cli import main

    out = tmp_path / "run"
    assert main(_run(synthetic_bundle, out, monkeypatch, "concat")) == 0
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    original = _studies(out)
    assert main(["forget", str(copy), "toy/concat"]) == 0
    assert _studies(out) == original and "toy/concat" in original
    assert "toy/concat" not in _studies(copy)
