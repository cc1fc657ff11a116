"""The README's "Add a dataset with YAML only" example, run as written on generated parquet files."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fusebench.cli import main
from fusebench.config import catalog
from fusebench.core.errors import UsageError
from fusebench.data.builders import build_tables

REPO = Path(__file__).resolve().parents[1]
STARS = ["bad", "ok", "good"]
WORDS = {"bad": "awful boring dull", "ok": "fine average plain", "good": "great superb lovely"}
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}


def _readme_yaml(name: str) -> str:
    section = (REPO / "README.md").read_text().split("## Add a dataset with YAML only", 1)[1]
    return re.search(rf"```yaml\n# my-configs/{name}\.yaml\n(.*?)```", section, re.DOTALL).group(1)


def _png(rgb: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), rgb).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture()
def example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """(data root with reviews/ and photos/, config dir with the README's two YAML files)."""
    rng = np.random.default_rng(0)
    data, cfg = tmp_path / "data", tmp_path / "my-configs"
    (data / "reviews").mkdir(parents=True)
    (data / "photos").mkdir(parents=True)
    cfg.mkdir()
    stars = [STARS[i % 3] for i in range(120)]
    pd.DataFrame({
        "text": [f"{WORDS[s]} {rng.choice(['film', 'plot', 'cast'])}" for s in stars],
        "stars": stars,
        "author": [f"a{i // 4}" for i in range(120)],  # 30 authors, 4 reviews each
    }).to_parquet(data / "reviews" / "reviews.parquet")
    names = [list(COLOURS)[i % 4] for i in range(40)]
    pd.DataFrame({
        "png": [_png(COLOURS[n]) for n in names],
        "captions": [[f"a {n} square", f"something {n}"] for n in names],
        "album": [f"album{i // 2}" for i in range(40)],
    }).to_parquet(data / "photos" / "photos.parquet")
    for name in ("reviews", "photos"):
        (cfg / f"{name}.yaml").write_text(_readme_yaml(name))
    monkeypatch.setenv(catalog.ENV_VAR, str(cfg))
    return data, cfg


def test_table_maps_string_labels_and_splits_by_fraction_grouped_and_stratified(example):
    data, _ = example
    tables = build_tables(catalog.get_dataset("reviews"), data, "full")
    splits = tables.splits
    assert sum(len(splits[s]) for s in splits) == 120
    authors = {s: set(splits[s]["group"]) for s in splits}
    assert authors["train"].isdisjoint(authors["val"] | authors["test"]) and authors["val"].isdisjoint(authors["test"])
    for s in splits:  # label i is STARS[i]: the text carries the class's words
        assert all(WORDS[STARS[y]].split()[0] in t for y, t in zip(splits[s]["label"], splits[s]["text"]))
        assert set(splits[s]["label"]) == {0, 1, 2}  # stratified: every class in every split
    assert abs(len(splits["test"]) / 120 - 0.2) < 0.07


def test_matching_pairs_each_photo_with_one_true_and_one_false_caption(example):
    data, _ = example
    splits = build_tables(catalog.get_dataset("photos"), data, "full").splits
    assert sum(len(t) for t in splits.values()) == 80  # 40 photos × 2 pairs
    for t in splits.values():
        assert sorted(t["label"]) == [0] * (len(t) // 2) + [1] * (len(t) // 2)
        n = len(t) // 2
        assert list(t["cluster"][:n]) == list(t["cluster"][n:])
    clusters = {s: set(t["cluster"]) for s, t in splits.items()}
    assert clusters["train"].isdisjoint(clusters["test"])


@pytest.mark.slow
def test_readme_commands_run_end_to_end(example, tmp_path, capsys):
    data, cfg = example
    assert main(["--config-dir", str(cfg), "list", "datasets", "--json"]) == 0
    names = {d["name"] for d in json.loads(capsys.readouterr().out)}
    assert {"reviews", "photos", "imdb"} <= names
    out = tmp_path / "run"
    code = main(["--config-dir", str(cfg), "run", "--datasets", "reviews,photos", "--strategies", "concat,unimodal,majority",
                 "--data-dir", str(data), "--trials", "1", "--seeds", "1", "--epochs", "40", "--out", str(out)])
    assert code == 0
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
    assert {r["dataset"] for r in records} == {"reviews", "photos"}
    assert all(r["status"] == "ok" for r in records), [r.get("error") for r in records]
    reviews = {r["strategy"]: r["metrics"]["accuracy"] for r in records if r["dataset"] == "reviews"}
    assert reviews["unimodal:words"] > 0.9  # each class has its own words: the task is learnable


@pytest.mark.parametrize("edit,message", [
    (("classes: [bad, ok, good]", "classes: [bad, good, fine]"), "label 'ok' is not among the classes"),
    (("num_classes: 3", "num_classes: 4"), "num_classes is 4 but the classes are"),
    (("label: stars", "label: starz"), "columns ['starz'] not in"),
    (("fractions: {train: 0.7, val: 0.1, test: 0.2}", "fractions: {train: 0.7, test: 0.3}"), "needs exactly train, val and test"),
])
def test_bad_table_yaml_is_a_usage_error_naming_the_problem(example, edit, message):
    data, cfg = example
    path = cfg / "reviews.yaml"
    path.write_text(path.read_text().replace(*edit))
    with pytest.raises(UsageError, match=re.escape(message)):
        build_tables(catalog.get_dataset("reviews"), data, "full")


def test_sparse_integer_labels_auto_and_split_column(example):
    data, cfg = example
    df = pd.read_parquet(data / "reviews" / "reviews.parquet")
    df["stars"] = df["stars"].map({"bad": 3, "ok": 7, "good": 12})
    df["part"] = np.where(np.arange(len(df)) % 10 == 0, "test", np.where(np.arange(len(df)) % 10 == 1, "validation", "train"))
    df.to_parquet(data / "reviews" / "reviews.parquet")
    text = (cfg / "reviews.yaml").read_text().replace("classes: [bad, ok, good]", "classes: auto")
    (cfg / "reviews.yaml").write_text(text.replace("fractions: {train: 0.7, val: 0.1, test: 0.2}", "split: part"))
    splits = build_tables(catalog.get_dataset("reviews"), data, "full").splits
    assert [len(splits[s]) for s in ("train", "val", "test")] == [96, 12, 12]
    assert all(WORDS[STARS[y]].split()[0] in t for y, t in zip(splits["train"]["label"], splits["train"]["text"]))
