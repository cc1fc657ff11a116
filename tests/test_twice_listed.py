"""A dataset or strategy named twice ran its cell twice, into one optuna study and one seed store
(two processes racing for one study's trials with --jobs 2, records merged over each other)."""

from __future__ import annotations

import pytest

from fusebench.cli import main
from fusebench.config.loader import SuiteConfig
from fusebench.run.selection import expand_cells


@pytest.mark.parametrize("field,values", [("datasets", ("toy", "toy")), ("strategies", ("concat", "majority", "concat"))])
def test_a_suite_naming_a_dataset_or_strategy_twice_is_refused(field, values):
    kwargs = {"name": "s", "description": "", "datasets": ("toy",), "strategies": ("concat",), field: values}
    with pytest.raises(ValueError, match=f"{field} lists {values[0]} more than once"):
        SuiteConfig(**kwargs)


def test_the_command_line_names_the_duplicate_and_exits_2(synthetic_bundle, monkeypatch, tmp_path, capsys):
    data, cfg = synthetic_bundle
    monkeypatch.setenv("FUSEBENCH_CONFIG_DIR", str(cfg))
    for flags in (["--datasets", "toy,toy", "--strategies", "concat"], ["--suite", "toy", "--strategies", "concat,concat"]):
        assert main(["run", *flags, "--data-dir", str(data), "--out", str(tmp_path / "run")]) == 2
        err = capsys.readouterr().err
        assert "more than once" in err and ("toy" in err if "toy,toy" in flags else "concat" in err)
    assert not (tmp_path / "run" / "results.jsonl").exists()


def test_two_selections_of_one_cell_make_one_cell():
    views = ["image", "text"]
    cells = expand_cells("d", views, ["unimodal", "unimodal:text", "concat", "concat:image+text", "majority"])
    assert [c.strategy for c in cells] == ["unimodal:image", "unimodal:text", "concat", "majority"]
