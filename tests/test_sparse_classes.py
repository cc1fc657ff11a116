"""`data.min_groups_per_class` (bench/data/classes.py) on a generated grouped dataset.

The fixture reproduces ESC-50 fold 4's defect: one class is a single large recording (group), so a
grouped split puts it wholly in train, where it becomes the train majority with no test row, and
`majority` scores 0. With the option the class is dropped, the rest renumbered, every kept class
reaches train, validation and test, and `majority` scores above 0.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fusebench.cli import main
from fusebench.config import catalog
from fusebench.core.errors import ConfigError
from fusebench.data.builders import build_tables
from fusebench.data.splits import sparse_classes
from fusebench.features.cache import FeatureCache
from fusebench.features.extract import encode_task
from fusebench.results.records import load_records

WORDS = ["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta"]


def _bundle(tmp_path: Path, min_groups: int | None) -> tuple[Path, Path]:
    """5 classes: 0–2 have 4 recordings of 4 rows; class 3 is one recording of 12 rows; class 4 has 2."""
    rng = np.random.default_rng(0)
    rows, gid = [], 0
    for cls, sizes in ((0, [4] * 4), (1, [4] * 4), (2, [4] * 4), (3, [12]), (4, [4, 4])):
        for size in sizes:
            for _ in range(size):
                rows.append({"text": " ".join(rng.choice(WORDS, size=5)), "y": cls, "src": f"rec{gid}"})
            gid += 1
    data = tmp_path / "data" / "sparse"
    data.mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(data / "all.parquet")
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    option = "" if min_groups is None else f"\n  min_groups_per_class: {min_groups}"
    (cfg / "sparse.yaml").write_text(f"""name: sparse
task: classification
builder: parquet
description: generated grouped classes, one of them a single recording
citation: none
num_classes: 5
metrics: [accuracy]
main_metric: accuracy
data:
  path: sparse
  files: {{all: all.parquet}}
  label: y
  group: src
  test_fraction: 0.25
  val_fraction: 0.25{option}
views:
  lexical: {{column: text, encoder: tfidf, modality: text, options: {{components: 4, min_df: 1}}}}
sizes:
  smoke: {{}}
""")
    return tmp_path / "data", cfg


def test_sparse_classes_counts_groups_and_absent_classes() -> None:
    labels = [0, 0, 0, 1, 1, 2]
    groups = ["a", "b", "c", "d", "d", "e"]
    assert sparse_classes(labels, groups, 3, classes=range(4)) == {1: 1, 2: 1, 3: 0}
    assert sparse_classes(labels, groups, 0) == {}
    assert sparse_classes(labels, None, 2) == {2: 1}  # no groups: every row is its own group


@pytest.mark.parametrize("min_groups", [None, 3])
def test_min_groups_per_class_drops_renumbers_and_covers_every_split(tmp_path, monkeypatch, min_groups) -> None:
    data, cfg_dir = _bundle(tmp_path, min_groups)
    monkeypatch.setenv("FUSEBENCH_CONFIG_DIR", str(cfg_dir))
    cfg = catalog.get_dataset("sparse")
    tables = build_tables(cfg, data, "smoke")
    train = np.asarray(tables.splits["train"]["label"])
    test = np.asarray(tables.splits["test"]["label"])
    if min_groups is None:  # the defect: the one-recording class is the train majority, absent from test
        assert tables.excluded_classes == {} and tables.classes is None
        majority = np.bincount(train).argmax()
        assert majority == 3 and not np.any(test == majority)
        return
    assert tables.classes == (0, 1, 2) and set(tables.excluded_classes) == {"3", "4"}
    assert "1 distinct src" in tables.excluded_classes["3"] and "2 distinct src" in tables.excluded_classes["4"]
    for split in ("train", "val", "test"):
        assert sorted(set(tables.splits[split]["label"])) == [0, 1, 2], split
    data_ = encode_task(cfg, tables, FeatureCache(tmp_path / "cache"), torch.device("cpu"))
    assert data_.config.num_classes == 3 and cfg.num_classes == 5


def test_min_groups_per_class_needs_a_group_column(tmp_path, monkeypatch) -> None:
    data, cfg_dir = _bundle(tmp_path, 3)
    text = (cfg_dir / "sparse.yaml").read_text().replace("  group: src\n", "")
    (cfg_dir / "sparse.yaml").write_text(text)
    monkeypatch.setenv("FUSEBENCH_CONFIG_DIR", str(cfg_dir))
    with pytest.raises(ConfigError, match="min_groups_per_class needs data.group"):
        build_tables(catalog.get_dataset("sparse"), data, "smoke")


@pytest.mark.parametrize("min_groups", [None, 3])
def test_majority_scores_above_zero_only_with_the_option(tmp_path, monkeypatch, min_groups) -> None:
    data, cfg_dir = _bundle(tmp_path, min_groups)
    monkeypatch.setenv("FUSEBENCH_CONFIG_DIR", str(cfg_dir))
    out = tmp_path / "run"
    code = main(["run", "--datasets", "sparse", "--strategies", "majority", "--size", "smoke", "--seeds", "1",
                 "--data-dir", str(data), "--out", str(out), "-q"])
    assert code == 0
    (record,) = load_records(out / "results.jsonl")
    meta = json.loads((out / "run.json").read_text())["data"]["sparse"]
    if min_groups is None:
        assert record.main_metric == 0.0  # the ESC-50 smoke defect, reproduced
        assert meta["excluded_classes"] == {} and meta["num_classes"] == 5
        return
    assert record.main_metric > 0
    assert meta["num_classes"] == 3 and meta["label_of_class"] == [0, 1, 2]
    assert set(meta["excluded_classes"]) == {"3", "4"}
    assert set(meta["class_counts"]["train"]) == {"0", "1", "2"} and meta["missing_classes"] == {}
    assert main(["report", str(out), "--html", "-q"]) == 0
    assert "class 3 excluded: 1 distinct src" in (out / "report.html").read_text()
