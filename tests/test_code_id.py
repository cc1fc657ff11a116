"""A record names the strategy code that scored it (bench/core/code_id.py): the id moves with the files
that define a strategy and with nothing else; a stored seed of other code is retrained; `timing status`
names the finished cells scored by code the checkout no longer has."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pandas as pd

import fusebench.core.code_id as code_id_module
from fusebench.core.code_id import code_id, defining_modules
from fusebench.results.records import Record, write_records
from fusebench.run.seed_store import SeedStore, seed_key
from fusebench.run.status import format_status, run_status, strategy_code
from fusebench.strategies import STRATEGIES
from fusebench.training.retrieval import DualEncoder


def _cls(name: str) -> type:
    return STRATEGIES.get(name).cls


def _edited(monkeypatch, module: str) -> None:
    """As if `module`'s file had one more line: `_source` returns other bytes for it."""
    real, path = code_id_module._source, sys.modules[module].__file__
    monkeypatch.setattr(code_id_module, "_source", lambda p: real(p) + (b"# edited\n" if p == path else b""))


def test_the_id_hashes_the_strategy_its_base_and_its_building_blocks_only() -> None:
    assert defining_modules(_cls("lmf")) == ["fusebench.strategies.base", "fusebench.strategies.bilinear",
                                             "fusebench.strategies.mid"]  # ProjectedModalities comes from mid
    assert defining_modules(DualEncoder) == ["fusebench.training.retrieval"]
    assert code_id(_cls("lmf")) != code_id(_cls("concat")) and len(code_id(_cls("lmf"))) == 16


def test_the_id_moves_with_its_files_and_with_no_other(monkeypatch) -> None:
    lmf, concat = code_id(_cls("lmf")), code_id(_cls("concat"))
    _edited(monkeypatch, "fusebench.strategies.bilinear")
    assert code_id(_cls("lmf")) != lmf and code_id(_cls("concat")) == concat
    monkeypatch.undo()
    _edited(monkeypatch, "fusebench.strategies.base")  # every strategy builds on it
    assert code_id(_cls("lmf")) != lmf and code_id(_cls("concat")) != concat
    monkeypatch.undo()
    _edited(monkeypatch, "fusebench.training.loop")  # not strategy code
    assert code_id(_cls("lmf")) == lmf


def test_a_plugins_id_covers_its_own_package(tmp_path: Path, monkeypatch) -> None:
    pkg = tmp_path / "myplug"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "blocks.py").write_text("import torch\nclass Block(torch.nn.Module):\n    pass\n")
    (pkg / "fusion.py").write_text("from fusebench.strategies.base import FusionModel\nfrom myplug.blocks import Block\n"
                                   "class Mine(FusionModel):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from myplug.fusion import Mine  # type: ignore[import-not-found]

    assert defining_modules(Mine) == ["fusebench.strategies.base", "myplug.blocks", "myplug.fusion"]


def _record(code: str) -> Record:
    return Record(dataset="d", task="classification", strategy="lmf", family="mid", modalities=["a"], seed=1,
                  status="ok", code_id=code, main_metric=0.5, sampler={"name": "TPESampler"})


def _frame() -> pd.DataFrame:
    return pd.DataFrame({"replicate": 0, "seed": 1, "index": [0], "label": [0], "cluster": ["a"], "pred": [0],
                         "prob": [[0.9, 0.1]]})


def test_a_seed_stored_by_other_strategy_code_is_retrained(tmp_path: Path, caplog) -> None:
    caplog.set_level("INFO", logger="fusebench.run.seed_store")
    key = seed_key({"seed": 1})
    for stored, now, kept in [("aaaa", "bbbb", False), ("aaaa", "aaaa", True), ("", "bbbb", True), ("aaaa", None, True)]:
        store = SeedStore(tmp_path / stored / str(now), "d", "lmf")
        store.save(0, 1, key, _record(stored), _frame())
        assert (store.load(0, 1, key, None, now) is not None) == kept, (stored, now)
    assert "scored by other strategy code (code id aaaa, now bbbb); retraining it" in caplog.text


def test_status_names_the_finished_cells_scored_by_other_strategy_code(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    meta = {"config": {"suite": {"name": "s", "replicates": 1, "seeds": 2}}, "plan": {"d": ["lmf", "concat", "mfb"]}}
    (out / "run.json").write_text(json.dumps(meta))
    lmf = _record("0123456789abcdef")  # a code id this checkout does not give lmf
    concat = dataclasses.replace(lmf, strategy="concat", code_id=strategy_code("concat"))
    mfb = dataclasses.replace(lmf, strategy="mfb", code_id="")  # written before the field: not judged
    write_records(out / "results.jsonl", [dataclasses.replace(r, seed=s) for r in (lmf, concat, mfb) for s in (1000, 1001)])
    status = run_status(out)
    assert status["code_changed"] == ["d/lmf"]
    assert "scored by strategy code that has changed since" in format_status(status) and "d/lmf;" in format_status(status)
    assert strategy_code("rerank:concat") == code_id(DualEncoder, _cls("concat")) and strategy_code("nope") is None
    assert strategy_code("unimodal:text") == strategy_code("unimodal") == code_id(_cls("unimodal"))
