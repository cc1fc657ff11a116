from pathlib import Path

import pytest

from fusebench.config import catalog
from fusebench.config.loader import load_dataset_config, load_suite_config
from fusebench.core.errors import ConfigError
from fusebench.run.selection import check_selection


@pytest.mark.parametrize("name", catalog.dataset_files().names())
def test_every_shipped_dataset_config_loads(name):
    cfg = catalog.get_dataset(name)
    assert cfg.name == name and cfg.views and cfg.main_metric in cfg.metrics


@pytest.mark.parametrize("name", catalog.suite_files().names())
def test_every_shipped_suite_loads(name):
    suite = catalog.get_suite(name)
    assert suite.datasets and suite.trials >= 1
    assert catalog.get_suite(name, check_strategy=check_selection) == suite  # and passes `fusebench run`'s check


def _write(tmp_path: Path, text: str, name: str = "bad.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


BASE = """name: bad
task: classification
builder: parquet
description: d
citation: c
num_classes: 2
metrics: [accuracy]
main_metric: accuracy
views:
  text: {column: text, encoder: tfidf, modality: text}
"""


def test_unknown_key_names_file_line_and_suggests(tmp_path):
    path = _write(tmp_path, BASE + "main_metrc: accuracy\n")
    with pytest.raises(ConfigError) as err:
        load_dataset_config(path)
    msg = str(err.value)
    assert f"{path}:11" in msg and "main_metrc" in msg and "Did you mean 'main_metric'?" in msg


def test_nested_unknown_key_is_located(tmp_path):
    path = _write(tmp_path, BASE.replace("modality: text}", "modality: text, encodr: x}"))
    with pytest.raises(ConfigError, match=r"bad.yaml:10: unknown key 'views.text.encodr'"):
        load_dataset_config(path)


def test_wrong_type_and_literal(tmp_path):
    with pytest.raises(ConfigError, match="num_classes must be int"):
        load_dataset_config(_write(tmp_path, BASE.replace("num_classes: 2", "num_classes: two")))
    with pytest.raises(ConfigError, match="Did you mean 'classification'"):
        load_dataset_config(_write(tmp_path, BASE.replace("task: classification", "task: clasification")))


def test_malformed_yaml_names_file(tmp_path):
    path = _write(tmp_path, "name: [unclosed\n")
    with pytest.raises(ConfigError, match="malformed YAML"):
        load_dataset_config(path)


def test_include_merges_defaults_under_own_keys(tmp_path):
    _write(tmp_path, "trials: 3\nseeds: 7\ndescription: from defaults\n", "_base.yaml")
    path = _write(tmp_path, "include: _base.yaml\nname: s\ndatasets: [imdb]\nseeds: 2\n", "s.yaml")
    suite = load_suite_config(path)
    assert (suite.trials, suite.seeds, suite.description) == (3, 2, "from defaults")


def test_semantic_validation_is_reported_with_file(tmp_path):
    path = _write(tmp_path, BASE.replace("main_metric: accuracy", "main_metric: auroc"))
    with pytest.raises(ConfigError, match="bad.yaml.*main_metric 'auroc' must be listed"):
        load_dataset_config(path)
