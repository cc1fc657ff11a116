"""Selecting views: `unimodal:VIEW`, `unimodal:A+B`, `FUSION:A+B`; a run encodes only the views its cells read."""

from __future__ import annotations

import json

import pytest

from fusebench.cli import main
from fusebench.core.errors import UsageError
from fusebench.results.records import load_records
from fusebench.run.selection import expand_cells, needed_views, parse_selection

VIEWS = ["audio", "image", "text"]


def _names(cells):
    return [(c.strategy, c.views) for c in cells]


def test_parse_selection():
    assert parse_selection("concat") == ("concat", None)
    assert parse_selection("unimodal:text") == ("unimodal", ("text",))
    assert parse_selection("concat:image+text") == ("concat", ("image", "text"))
    with pytest.raises(UsageError, match="name the views"):
        parse_selection("unimodal:")


def test_unimodal_view_selection_gives_one_cell_per_chosen_view():
    assert _names(expand_cells("d", VIEWS, ["unimodal:text"])) == [("unimodal:text", ("text",))]
    assert _names(expand_cells("d", VIEWS, ["unimodal:image+text"])) == [
        ("unimodal:image", ("image",)), ("unimodal:text", ("text",))]
    assert len(expand_cells("d", VIEWS, ["unimodal"])) == 3
    assert expand_cells("d", ["image"], ["unimodal:text"]) == []  # a task without the view: no cell


def test_fusion_view_selection_is_recorded_under_its_views():
    cells = expand_cells("d", VIEWS, ["concat:text+image"])
    assert _names(cells) == [("concat:image+text", ("image", "text"))]
    # all views selected = the plain strategy, so records stay comparable with an unselected run
    assert _names(expand_cells("d", ["image", "text"], ["concat:text+image"])) == [("concat", ("image", "text"))]
    assert expand_cells("d", ["image", "text"], ["concat:image+audio"]) == []  # asks for a missing view
    assert expand_cells("d", VIEWS, ["concat:image"]) == []  # fewer views than the strategy needs
    assert needed_views(expand_cells("d", VIEWS, ["concat:text+image", "unimodal:text"])) == {"image", "text"}


def test_a_view_no_dataset_has_exits_2_naming_the_views(synthetic_bundle, monkeypatch, capsys):
    data, cfg = synthetic_bundle
    monkeypatch.setenv("FUSEBENCH_CONFIG_DIR", str(cfg))
    assert main(["run", "--datasets", "toy", "--strategies", "unimodal:lexcial", "--data-dir", str(data)]) == 2
    err = capsys.readouterr().err
    assert "unimodal:lexcial" in err and "['lexical', 'neural']" in err


def test_run_encodes_only_the_views_its_cells_read(synthetic_bundle, monkeypatch, tmp_path, isolated_cache):
    data, cfg = synthetic_bundle
    monkeypatch.setenv("FUSEBENCH_CONFIG_DIR", str(cfg))
    cache = tmp_path / "cache"
    monkeypatch.setenv("FUSEBENCH_CACHE", str(cache))
    out = tmp_path / "run"
    assert main(["run", "--suite", "toy", "--strategies", "unimodal:lexical", "--data-dir", str(data),
                 "--out", str(out), "-q"]) == 0
    records = load_records(out / "results.jsonl")
    assert {r.strategy for r in records} == {"unimodal:lexical"}
    assert {tuple(r.modalities) for r in records} == {("lexical",)}
    meta = json.loads((out / "run.json").read_text())
    assert set(meta["data"]["toy"]["encoders"]) == {"lexical"}
    assert len(list((cache / "features" / "toy").glob("*.pt"))) == 3  # train/val/test of one view


def test_planning_cells_loads_no_search_or_training_code():
    """Expanding selections into cells (bench/run/selection.py) is planning: it imports the registry,
    not the search, the trainer or the cell runner, so plan paths stay light and cell.py keeps one job."""
    import subprocess
    import sys

    code = ("import sys; from fusebench.run.selection import expand_cells; "
            "print(sorted(m for m in ('fusebench.run.cell', 'fusebench.training.loop', 'fusebench.search.study')"
            " if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
