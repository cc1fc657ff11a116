"""Bad command-line and config inputs are exit 2 with a message naming the file/flag and key (docs/reliability.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fusebench.cli import main
from fusebench.config.loader import load_dataset_config
from fusebench.core.errors import UsageError
from fusebench.results.records import Record, load_records

REPO = Path(__file__).resolve().parent.parent
IMDB = REPO / "datasets_cfg" / "imdb.yaml"


@pytest.mark.parametrize("argv, expected", [
    (["run", "--datasets", "imdb", "--strategies", ","], "no strategy"),
    (["run", "--datasets", ",", "--strategies", "concat"], "no dataset"),
    (["run", "--datasets", "imdb", "--strategies", "concat", "--patience", "-1"], "patience >= 1"),
])
def test_bad_run_arguments_are_exit_2(argv: list[str], expected: str, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err


@pytest.mark.parametrize("where", ["missing_dir", "directory"])
def test_throughput_out_unwritable_is_exit_2_before_measuring(where: str, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "nope" / "t.json" if where == "missing_dir" else tmp_path
    assert main(["throughput", "--strategies", "concat", "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert "--out" in captured.err and "device:" not in captured.out  # nothing was measured


def _write(tmp_path: Path, text: str, name: str = "bad.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_python_tag_is_refused_with_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path, 'name: x\ntask: !!python/object/apply:os.system ["echo hi"]\n')
    with pytest.raises(UsageError, match=rf"{path}:2: YAML tag .*python"):
        load_dataset_config(path)


def test_missing_key_blames_the_file_not_its_include(tmp_path: Path) -> None:
    (tmp_path / "_defaults.yaml").write_text((REPO / "datasets_cfg" / "_defaults.yaml").read_text())
    path = _write(tmp_path, "include: _defaults.yaml\nname: y\n")
    with pytest.raises(UsageError, match=rf"^{path}: missing required key"):
        load_dataset_config(path)
    empty = _write(tmp_path, "", "empty.yaml")
    with pytest.raises(UsageError, match=rf"^{empty}"):
        load_dataset_config(empty)


def test_wrong_nested_type_names_file_and_key(tmp_path: Path) -> None:
    text = IMDB.read_text()
    assert "smoke: {train: 800" in text
    path = _write(tmp_path, text.replace("smoke: {train: 800", 'smoke: {train: "eight"'), "imdb.yaml")
    with pytest.raises(UsageError, match=rf"{path}:\d+: sizes.smoke.train must be int"):
        load_dataset_config(path)


# ---- hypothesis: every generated bad config is exit 2 naming the file and key, never a traceback

BAD_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=True), st.text(max_size=5),
                       st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


def _paths(node: object, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, prefix + (k,))
    return out


def _set(doc: dict, path: tuple, value: object) -> None:
    for key in path[:-1]:
        doc = doc[key]
    doc[path[-1]] = value


def _check_config(doc: dict, tmp: Path) -> None:
    path = tmp / "fuzz.yaml"
    path.write_text(yaml.safe_dump(doc))
    try:
        cfg = load_dataset_config(path)
        from fusebench.features.identity import resolve_options  # what `run` checks before encoding

        for name, view in cfg.views.items():
            resolve_options(view.encoder, view.options, f"{path}: views.{name}.options")
    except UsageError as exc:
        assert str(path) in str(exc), f"message names no file: {exc}"
        return


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_dataset_configs_are_exit_2_or_valid(data: st.DataObject, tmp_path: Path) -> None:
    """Replace, delete or add a key anywhere in a real dataset config: it loads, or it is a UsageError naming the file."""
    doc = yaml.safe_load(IMDB.read_text())
    doc.pop("include", None)
    paths = _paths(doc)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        action = data.draw(st.sampled_from(["replace", "delete", "add"]))
        try:
            if action == "replace":
                _set(doc, path, data.draw(BAD_VALUES))
            elif action == "delete":
                _set(doc, path, None) if len(path) > 1 else doc.pop(path[0], None)
            else:
                _set(doc, path[:-1] + (data.draw(st.text(min_size=1, max_size=6)),), data.draw(BAD_VALUES))
        except (KeyError, TypeError):
            continue  # the path no longer exists after an earlier change
    _check_config(doc, tmp_path)


RECORD_KEYS = [f for f in Record.__dataclass_fields__]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(RECORD_KEYS), value=BAD_VALUES, drop=st.booleans())
def test_fuzzed_records_are_exit_2_naming_file_and_line(key: str, value: object, drop: bool, tmp_path: Path) -> None:
    import json

    good = Record(dataset="d", task="t", strategy="s", family="early", modalities=["a"], seed=1, status="ok").to_json()
    bad = dict(good)
    if drop:
        bad.pop(key)
    else:
        bad[key] = value
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    try:
        records = load_records(path, strict=True)
    except UsageError as exc:
        assert f"{path}:2" in str(exc)
        return
    assert len(records) == 2
