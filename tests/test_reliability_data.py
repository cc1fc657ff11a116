"""Bad data content is exit 2 naming the file, column and first bad row (docs/reliability.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fusebench.cli import main


def _mutate(data: Path, name: str, change) -> None:
    path = data / "toy" / name
    df = change(pd.read_parquet(path))
    df.to_parquet(path)


def _set(col: str, row: int, value, dtype=None):
    def change(df: pd.DataFrame) -> pd.DataFrame:
        if dtype is not None:
            df[col] = df[col].astype(dtype)
        df.iloc[row, df.columns.get_loc(col)] = value
        return df
    return change


CASES = {
    "label_outside_num_classes": ("toy_test.parquet", _set("y", 3, 7), "label 7 is outside [0, 2)"),
    "nan_label": ("toy_test.parquet", _set("y", 3, np.nan, "float64"), "is missing"),
    "string_label": ("toy_test.parquet", lambda df: df.assign(y=df["y"].map({0: "neg", 1: "pos"})),
                     "not an integer class id"),
    "none_text": ("toy_test.parquet", _set("text", 2, None, "object"), "column 'text' (view lexical), row "),
    "all_empty_text": ("toy_test.parquet", lambda df: df.assign(text=""), "every text is empty"),
    "one_class_test": ("toy_test.parquet", lambda df: df.assign(y=1), "one-class test"),
    "missing_label_column": ("toy_test.parquet", lambda df: df.drop(columns=["y"]), "no column(s) ['y']"),
    "missing_text_column": ("toy_train.parquet", lambda df: df.drop(columns=["text"]), "no column(s) ['text']"),
    "empty_split": ("toy_test.parquet", lambda df: df.iloc[:0], "has no rows"),
    "damaged_parquet": ("toy_test.parquet", None, "not a readable parquet file"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_data_content_is_exit_2(case: str, synthetic_bundle, monkeypatch, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    data, cfg = synthetic_bundle
    monkeypatch.setenv("FUSEBENCH_CONFIG_DIR", str(cfg))
    name, change, expected = CASES[case]
    if change is None:
        path = data / "toy" / name
        raw = bytearray(path.read_bytes())
        raw[-20:] = b"\x00" * 20  # the footer: a flipped tail
        path.write_bytes(bytes(raw))
    else:
        _mutate(data, name, change)
    code = main(["run", "--datasets", "toy", "--strategies", "majority", "--size", "small", "--seeds", "1",
                 "--data-dir", str(data), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert expected in err and "Traceback" not in err
    assert "toy" in err  # names the dataset's file
