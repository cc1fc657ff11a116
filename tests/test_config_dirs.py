"""Additive config directories (issue 9, item 5): user folders are searched before the built-ins."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from fusebench.cli import main
from fusebench.config import catalog
from fusebench.config.loader import CONFIG_ROOT
from fusebench.core.errors import ConfigError

BUILTIN_DATASETS = {p.stem for p in CONFIG_ROOT.glob("*.yaml") if not p.name.startswith("_")}

MY_DATASET = """\
include: _defaults.yaml
name: {name}
description: a user's dataset
citation: none
builder: parquet
num_classes: 2
data: {{path: mine, files: {{all: mine.parquet}}, label: y}}
views:
  text: {{column: text, encoder: tfidf, modality: text}}
{extra}"""


def _dataset(folder: Path, name: str, extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(MY_DATASET.format(name=name, extra=extra))
    return path


def _suite(folder: Path, name: str, datasets: str, extra: str = "") -> Path:
    (folder / "suites").mkdir(parents=True, exist_ok=True)
    path = folder / "suites" / f"{name}.yaml"
    path.write_text(f"name: {name}\ndescription: mine\ndatasets: [{datasets}]\n{extra}")
    return path


@pytest.fixture(autouse=True)
def _no_user_dirs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(catalog.ENV_VAR, raising=False)


def test_user_dirs_add_to_builtins_and_include_finds_builtin_defaults(tmp_path, monkeypatch):
    _dataset(tmp_path / "a", "mine")
    _suite(tmp_path / "b", "mysuite", "mine, imdb")
    monkeypatch.setenv(catalog.ENV_VAR, os.pathsep.join([str(tmp_path / "a"), str(tmp_path / "b")]))
    assert set(catalog.dataset_files().names()) == BUILTIN_DATASETS | {"mine"}
    assert {"smoke", "standard", "tiny", "mysuite"} <= set(catalog.suite_files().names())
    cfg = catalog.get_dataset("mine")
    assert cfg.metrics == ("accuracy", "macro_f1") and cfg.main_metric == "accuracy"  # from the built-in _defaults.yaml
    assert catalog.get_suite("mysuite").datasets == ("mine", "imdb")


def test_shadowing_a_builtin_needs_override(tmp_path, monkeypatch):
    path = _dataset(tmp_path, "imdb")
    monkeypatch.setenv(catalog.ENV_VAR, str(tmp_path))
    with pytest.raises(ConfigError, match=r"imdb\.yaml: dataset 'imdb' is also defined in .*override: true"):
        catalog.dataset_files()
    path.write_text(path.read_text() + "override: true\n")
    assert catalog.dataset_files().get("imdb") == path.resolve()
    assert catalog.get_dataset("imdb").views.keys() == {"text"}


def test_shadowing_a_builtin_suite_exits_2(tmp_path, capsys):
    _suite(tmp_path, "smoke", "imdb")
    assert main(["--config-dir", str(tmp_path), "list", "suites"]) == 2
    assert "suite 'smoke' is also defined" in capsys.readouterr().err
    _suite(tmp_path, "smoke", "imdb", "override: true\n")
    assert main(["list", "suites", "--json", "--config-dir", str(tmp_path)]) == 0
    smoke = next(s for s in json.loads(capsys.readouterr().out) if s["name"] == "smoke")
    assert smoke["datasets"] == ["imdb"] and smoke["description"] == "mine"


def test_earlier_dir_wins_only_with_override(tmp_path, monkeypatch):
    first, second = _dataset(tmp_path / "1", "mine"), _dataset(tmp_path / "2", "mine")
    monkeypatch.setenv(catalog.ENV_VAR, os.pathsep.join([str(first.parent), str(second.parent)]))
    with pytest.raises(ConfigError, match="also defined in"):
        catalog.dataset_files()
    first.write_text(first.read_text() + "override: true\n")
    assert catalog.dataset_files().get("mine") == first.resolve()


def test_repeated_config_dir_flags_and_env_are_searched_in_order(tmp_path, monkeypatch, capsys):
    _dataset(tmp_path / "a", "one")
    _dataset(tmp_path / "b", "two")
    _dataset(tmp_path / "c", "three")
    monkeypatch.setenv(catalog.ENV_VAR, str(tmp_path / "c"))
    assert main(["--config-dir", str(tmp_path / "a"), "list", "datasets", "--json", "--config-dir", str(tmp_path / "b")]) == 0
    names = {d["name"] for d in json.loads(capsys.readouterr().out)}
    assert names == BUILTIN_DATASETS | {"one", "two", "three"}
    assert os.environ[catalog.ENV_VAR] == str(tmp_path / "c")  # restored after the command


def test_both_flag_positions_are_kept(tmp_path, capsys):
    _dataset(tmp_path / "a", "one")
    _dataset(tmp_path / "b", "two")
    assert main(["--config-dir", str(tmp_path / "a"), "--config-dir", str(tmp_path / "b"), "list", "datasets", "--json"]) == 0
    assert {d["name"] for d in json.loads(capsys.readouterr().out)} == BUILTIN_DATASETS | {"one", "two"}


def test_missing_config_dir_exits_2_naming_it(tmp_path, capsys):
    assert main(["--config-dir", str(tmp_path / "nope"), "list", "datasets"]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "nope") in err and "does not exist" in err


def test_missing_include_names_file_and_builtin_includes(tmp_path, monkeypatch):
    _dataset(tmp_path, "mine")
    (tmp_path / "mine.yaml").write_text((tmp_path / "mine.yaml").read_text().replace("_defaults.yaml", "_defualts.yaml"))
    monkeypatch.setenv(catalog.ENV_VAR, str(tmp_path))
    with pytest.raises(ConfigError, match=r"mine\.yaml: include '_defualts\.yaml' not found.*_defaults\.yaml"):
        catalog.get_dataset("mine")


def test_version_names_version_and_revision(capsys):
    from fusebench import __version__

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"fusebench {__version__} (source ") and "unknown" not in out  # tests run from the checkout


def test_a_folder_named_twice_is_searched_once(tmp_path, monkeypatch, capsys):
    _dataset(tmp_path, "mine")
    monkeypatch.setenv(catalog.ENV_VAR, str(tmp_path))
    assert main(["--config-dir", str(tmp_path), "list", "datasets", "--json"]) == 0
    assert "mine" in {d["name"] for d in json.loads(capsys.readouterr().out)}


@pytest.mark.parametrize(("listed", "wanted"), [
    ("concat\n  - rerank:concat", r"t\.yaml:6: strategies\[1\]: strategy 'rerank:concat': select the re-ranker by its plain"),
    ("concta", r"t\.yaml:5: strategies\[0\]: .*'concta'.*concat"),
    ("dual_encoder", r"t\.yaml:5: strategies\[0\]: strategy 'dual_encoder': the dual encoder is not selected"),
    # review of stop 37: these named a flag the user never passed, or no file at all
    ("concat\n  - unimodal:nosuchview", r"t\.yaml:6: strategies\[1\]: strategy 'unimodal:nosuchview': no dataset of this "
                                          r"run has view\(s\) \['nosuchview'\]; views here: \['image', 'text'\]"),
    ("concat\n  - 'unimodal:'", r"t\.yaml:6: strategies\[1\]: strategy 'unimodal:': name the views after ':'"),
    ("all\n  - concat", r"t\.yaml:5: strategies\[0\]: strategy 'all' selects every strategy and stands alone"),
])
def test_a_suite_strategy_that_is_not_a_selection_is_blamed_on_its_line(tmp_path, monkeypatch, capsys, listed, wanted):
    """A suite YAML's bad strategy names the file and the line it is written on (exit 2, before any data is
    read); `--strategies` replaces the suite's list, so the suite's own names are then not checked."""
    _suite(tmp_path, "t", "flickr8k-retrieval", f"strategies:\n  - {listed}\n")
    assert main(["--config-dir", str(tmp_path), "run", "--suite", "t", "--out", str(tmp_path / "out")]) == 2
    assert re.search(wanted, capsys.readouterr().err)
    assert not (tmp_path / "out").exists()
    monkeypatch.setenv(catalog.ENV_VAR, str(tmp_path))
    assert catalog.get_suite("t").strategies[0] == listed.split()[0].strip("'")  # no checker: `list suites` lists it
    assert main(["run", "--suite", "t", "--strategies", "bogus", "--out", str(tmp_path / "out")]) == 2
    assert "unknown strategy 'bogus'" in capsys.readouterr().err  # --strategies replaced the suite's names


@pytest.mark.parametrize(("body", "wanted"), [
    ("datasets: []\nstrategies: [concat]\n", r"t\.yaml:3: datasets lists none; name at least one, e.g. datasets: \[imdb\]"),
    ("datasets: [imdb]\nstrategies: []\n", r"t\.yaml:4: strategies lists none; name at least one"),
    ("datasets: [imdb]\nstrategies: all\n", r"t\.yaml:4: strategies must be a list, got 'all'; write it as a list: \[all\]"),
    ("datasets: [imdb]\nstrategies: 'unimodal: text_neural'\n", r"write it as a list: \['unimodal: text_neural'\]"),  # quoted
    ("datasets:\n  - imdb\n  - imbd\nstrategies: [concat]\n", r"t\.yaml:5: datasets lists unknown dataset 'imbd'"),
])
def test_a_suite_with_an_empty_or_misspelled_list_is_blamed_on_its_line(tmp_path, capsys, body, wanted):
    (tmp_path / "suites").mkdir()
    (tmp_path / "suites" / "t.yaml").write_text(f"name: t\ndescription: mine\n{body}")
    assert main(["--config-dir", str(tmp_path), "run", "--suite", "t", "--out", str(tmp_path / "out")]) == 2
    assert re.search(wanted, capsys.readouterr().err)


def test_suite_names_are_stripped_so_a_spaced_twin_is_a_duplicate(tmp_path, monkeypatch):
    """`[" concat", "gmu "]` named cells (and records) " concat" and "gmu "; `[concat, " concat"]` ran one
    strategy twice, into two studies."""
    _suite(tmp_path, "t", "imdb", 'strategies: [" concat", "gmu "]\n')
    monkeypatch.setenv(catalog.ENV_VAR, str(tmp_path))
    assert catalog.get_suite("t").strategies == ("concat", "gmu")
    _suite(tmp_path, "t", " imdb", 'strategies: [concat, " concat"]\n')
    with pytest.raises(ConfigError, match="strategies lists concat more than once"):
        catalog.get_suite("t")


def test_a_retrieval_task_whose_main_metric_is_not_rsum_is_refused(tmp_path, monkeypatch):
    """Its cells score rsum whatever the YAML said: main_metric: i2t_r1 was silently ignored (and logged as
    `i2t_r1=<the rsum>`)."""
    text = (CONFIG_ROOT / "flickr8k-retrieval.yaml").read_text().replace("main_metric: rsum", "main_metric: i2t_r1")
    (tmp_path / "flickr8k-retrieval.yaml").write_text(text + "override: true\n")
    monkeypatch.setenv(catalog.ENV_VAR, str(tmp_path))
    line = text.splitlines().index("main_metric: i2t_r1") + 1
    with pytest.raises(ConfigError, match=rf"flickr8k-retrieval\.yaml:{line}: invalid DatasetConfig: main_metric 'i2t_r1': "
                                          r"a retrieval task's main metric is rsum.*set main_metric: rsum"):
        catalog.get_dataset("flickr8k-retrieval")


def test_a_check_between_a_users_field_and_an_included_default_blames_the_users_file(tmp_path, monkeypatch):
    """Review of stop 38: `metrics: [auroc]` in a user's dataset beside `_defaults.yaml`'s main_metric was blamed
    on the installed `_defaults.yaml`, a file the user never wrote."""
    path = _dataset(tmp_path, "mine", "metrics: [auroc]\n")
    monkeypatch.setenv(catalog.ENV_VAR, str(tmp_path))
    line = path.read_text().splitlines().index("metrics: [auroc]") + 1
    with pytest.raises(ConfigError, match=rf"mine\.yaml:{line}: invalid DatasetConfig: main_metric 'accuracy' must be listed"):
        catalog.get_dataset("mine")


def test_a_mapping_key_written_in_digits_is_not_shown_as_a_list_index(tmp_path, monkeypatch):
    path = _dataset(tmp_path, "mine")
    path.write_text(path.read_text().replace("  text: {column: text, encoder: tfidf, modality: text}",
                                             "  '2': {column: text, encoder: tfidf, modality: txt}"))
    monkeypatch.setenv(catalog.ENV_VAR, str(tmp_path))
    with pytest.raises(ConfigError, match=r"views\.2\.modality='txt' is not one of"):
        catalog.get_dataset("mine")


def test_a_field_error_survives_pickling():  # a worker process's config error reaches the parent whole
    import pickle

    from fusebench.config.loader import FieldError

    err = pickle.loads(pickle.dumps(FieldError(("trials",), "trials must be >= 1")))
    assert err.paths == [("trials",)] and str(err) == "trials must be >= 1"


@pytest.mark.parametrize(("extra", "wanted"), [
    ("trials: 0\n", r"t\.yaml:4: invalid SuiteConfig: trials must be >= 1, got 0"),
    ("seeds: 3\nmonitor: val_acc\n", r"t\.yaml:5: invalid SuiteConfig: monitor must be 'val_loss' or 'val_metric'"),
    ("seeds: 3\nmin_steps: -1\n", r"t\.yaml:5: invalid SuiteConfig: patience >= 1 and patience_steps, min_steps"),
    ("encoders: [frozen, last:0]\n", r"t\.yaml:4: invalid SuiteConfig: .*last:0"),
    ("encoders:\n  - frozen\n  - last:0\n", r"t\.yaml:6: invalid SuiteConfig: .*last:0"),  # was :4, the key's line
    ("encoders: 'frozen,full,last:x'\n", r"t\.yaml:4: invalid SuiteConfig: .*last:x"),
    ("strategies:\n  - concat\n  - gmu\n  - concat\n", r"t\.yaml:7: invalid SuiteConfig: strategies lists concat more than once"),
    ("batch_size: [1]\n", r"t\.yaml:4: batch_size must be int"),
    ("finetune: {bogus: 1}\n", r"t\.yaml:4: unknown key 'finetune\.bogus'"),
    ("strategies: [concat, 3]\n", r"t\.yaml:4: strategies\[1\] must be str, got 3"),  # was strategies.1
])
def test_a_suite_field_that_fails_its_check_is_blamed_on_its_own_line(tmp_path, monkeypatch, extra, wanted):
    """Before stop 38 the checks of `__post_init__` named the file only ("t.yaml: invalid SuiteConfig: …"),
    and list items read `strategies.1` here but `strategies[1]` in the strategy check."""
    _suite(tmp_path, "t", "imdb", extra)
    monkeypatch.setenv(catalog.ENV_VAR, str(tmp_path))
    with pytest.raises(ConfigError, match=wanted):
        catalog.get_suite("t")
