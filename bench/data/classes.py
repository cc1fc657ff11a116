"""Dropping classes that a grouped split cannot place in every split (`data.min_groups_per_class`).

Why: a split that keeps groups whole (ESC-50 clips of one recording, `src_file`) cannot put a class
into train, validation and test unless its rows span at least three groups. ESC-50 fold 4 has a
class whose 8 clips are all one recording: it landed wholly in train, became the train majority and
had no test clip, so `majority` scored 0. A dataset that sets `min_groups_per_class` loses such
classes before splitting; the kept classes are renumbered 0..C-1 in their original order (the model
then has C outputs: `TaskTables.num_classes`), and run.json lists what was dropped and why.
"""

from __future__ import annotations

import datasets
import numpy as np

from fusebench.config.loader import DatasetConfig
from fusebench.core.errors import ConfigError, DataError
from fusebench.data.splits import sparse_classes


def _check_labels(cfg: DatasetConfig, raw: dict[str, datasets.Dataset], label: str) -> None:
    for split, ds in raw.items():
        for row, v in enumerate(ds[label]):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v < cfg.num_classes:
                raise DataError(f"{cfg.name}: {split} table, column {label!r}, row {row}: label {v!r} is not an "
                                f"integer in [0, {cfg.num_classes}) (num_classes); fix the data or num_classes")


def drop_sparse_classes(
    cfg: DatasetConfig, raw: dict[str, datasets.Dataset], label: str, group: str | None, min_groups: int
) -> tuple[dict[str, datasets.Dataset], tuple[int, ...] | None, dict[str, str]]:
    """Drop every class of 0..num_classes-1 whose rows (over all tables in `raw`) span fewer than
    `min_groups` distinct `group` values, and renumber the rest 0..C-1.

    Returns the filtered tables, the original label of each new label (None when nothing is
    configured), and the reason each dropped class was dropped (original label → text).
    """
    if min_groups <= 0:
        return raw, None, {}
    where = f"datasets_cfg/{cfg.name}.yaml"
    if not group:
        raise ConfigError(f"{where}: data.min_groups_per_class needs data.group (the column whose equal values stay "
                          "in one split); set data.group or remove min_groups_per_class")
    _check_labels(cfg, raw, label)
    labels = [int(v) for ds in raw.values() for v in ds[label]]
    groups = [v for ds in raw.values() for v in ds[group]]
    sparse = sparse_classes(labels, groups, min_groups, classes=range(cfg.num_classes))
    kept = tuple(c for c in range(cfg.num_classes) if c not in sparse)
    if len(kept) < 2:
        raise ConfigError(f"{where}: data.min_groups_per_class={min_groups} leaves {len(kept)} class(es) of "
                          f"{cfg.num_classes}; lower it")
    reasons = {str(c): (f"{n} distinct {group} value(s) < min_groups_per_class={min_groups}: a grouped split "
                        "cannot put it in train, validation and test") for c, n in sorted(sparse.items())}
    new = {c: i for i, c in enumerate(kept)}
    out = {}
    for split, ds in raw.items():
        ys = [int(v) for v in ds[label]]
        ds = ds.select([i for i, v in enumerate(ys) if v in new])
        out[split] = ds.remove_columns(label).add_column(label, [new[v] for v in ys if v in new])
    return out, kept, reasons
