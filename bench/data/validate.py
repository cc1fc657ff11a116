"""Content checks of built tables: bad data is exit 2 naming the file, split, column and first bad row.

Run by `build_tables` on every builder's output (so `run`, `worker` and `throughput` all see it),
before anything is encoded or trained: an empty split, a label that is missing (None/NaN), not an
integer or outside `[0, num_classes)`, a test split with a single class (its AUROC and CI would be
meaningless), a text view with a missing value or with nothing but empty strings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from fusebench.config.loader import DatasetConfig
from fusebench.core.errors import DataError


def _where(cfg: DatasetConfig, split: str) -> str:
    return f"datasets_cfg/{cfg.name}.yaml (data.path {cfg.data.get('path', cfg.builder)!r}), split {split}"


def _bad_label(value: Any, num_classes: int) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "missing"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and not value.is_integer()):
        return "not an integer class id"
    if not 0 <= int(value) < num_classes:
        return f"outside [0, {num_classes}) (num_classes)"
    return None


def check_labels(cfg: DatasetConfig, split: str, labels: Sequence[Any], column: str = "label") -> None:
    where = _where(cfg, split)
    if len(labels) == 0:
        raise DataError(f"{where}: the split is empty; check data.files and sizes in the YAML")
    for row, value in enumerate(labels):
        why = _bad_label(value, cfg.num_classes)
        if why:
            raise DataError(f"{where}, column {column!r}, row {row}: label {value!r} is {why}; "
                            "fix the data or num_classes in the YAML")
    # retrieval rows are all matching pairs (label 1) by construction; ranks, not classes, are scored
    if split == "test" and cfg.task != "retrieval" and cfg.num_classes >= 2 and len({int(v) for v in labels}) < 2:
        raise DataError(f"{where}, column {column!r}: every test example has class {int(labels[0])}; a one-class test "
                        "split cannot be scored (AUROC, CIs); use a larger or stratified test split")


def check_text(cfg: DatasetConfig, split: str, view: str, column: str, values: Sequence[Any]) -> None:
    where = _where(cfg, split)
    for row, value in enumerate(values):
        if value is None or not isinstance(value, str):
            raise DataError(f"{where}, column {column!r} (view {view}), row {row}: text {value!r} is missing or not "
                            "a string; fill or drop such rows")
    if values and not any(v.strip() for v in values):
        raise DataError(f"{where}, column {column!r} (view {view}): every text is empty; point the view at a text column")


def check_tables(cfg: DatasetConfig, splits: dict[str, Any]) -> None:
    """All content checks on built `splits` (split name → table with a `label` column)."""
    for split, table in splits.items():
        names = list(getattr(table, "column_names", []) or list(table))
        if "label" not in names:
            raise DataError(f"{_where(cfg, split)}: no label column after building; set data.label in the YAML")
        check_labels(cfg, split, list(table["label"]))
        for view_name, view in sorted(cfg.views.items()):
            if view.modality == "text" and view.column in names:
                check_text(cfg, split, view_name, view.column, list(table[view.column]))
