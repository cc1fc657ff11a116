"""Builders for datasets described by YAML alone (README, "Add a dataset with YAML only").

- `table`: one parquet table (one file or several shards) → a classification task. Labels may be
  strings or sparse integers: `classes: [neg, neutral, pos]` fixes the class order, `classes: auto`
  (the default) takes the sorted distinct values. Splits come from a column naming each row's split
  (`split: COLUMN`, values train/val/test, also validation/dev) or from `fractions`, stratified by
  label and grouped by `group` (fusebench.data.splits).
- `matching`: image–caption matching from any parquet of images and captions (one row per image;
  the caption column holds a string or a list of strings). Each image gives one true pair (a seeded
  choice among its captions) and one mismatched pair (a caption of another image of the same split),
  as for Flickr8k-ITM; images are split before pairing (`split: COLUMN` or `fractions`, grouped by
  `group`), so an image never crosses splits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from fusebench.config.loader import DatasetConfig, SplitSizes
from fusebench.core.errors import ConfigError, DataError
from fusebench.data.builders import (
    BUILDERS,
    SPLITS,
    TaskTables,
    _fingerprint,
    _params,
    _read_parquet,
    _resolve,
    limit_rows,
)
from fusebench.data.manifest import file_sha256
from fusebench.data.splits import SplitFractions, stratified_group_split

SPLIT_NAMES = {"train": "train", "val": "val", "validation": "val", "dev": "val", "valid": "val", "test": "test"}


def _where(cfg: DatasetConfig) -> str:
    return f"dataset {cfg.name!r} (data.path/files)"


def _load(cfg: DatasetConfig, root: Path, path: str, files: str | Sequence[str],
          columns: list[str]) -> tuple[datasets.Dataset, dict[str, str]]:
    rels = _resolve(root, path, (files,) if isinstance(files, str) else tuple(files), cfg)
    ds = _read_parquet(root, rels)
    missing = sorted(set(columns) - set(ds.column_names))
    if missing:
        raise DataError(f"{cfg.name}: columns {missing} not in {rels}; the file has {ds.column_names}. "
                        f"Fix the column names in the dataset YAML")
    return ds.select_columns(sorted(set(columns))), {r: file_sha256(root, r) for r in rels}


def _assign(cfg: DatasetConfig, ds: datasets.Dataset, split_col: str | None, fractions: dict[str, float],
            labels: Sequence[Any] | None, group: str | None, seed: int) -> dict[str, np.ndarray]:
    """Row indices per split: from the split column, else stratified (by `labels`) and grouped by fractions."""
    if split_col:
        names = [str(v).strip().lower() for v in ds[split_col]]
        bad = next(((i, v) for i, v in enumerate(names) if v not in SPLIT_NAMES), None)
        if bad:
            raise DataError(f"{cfg.name}: column {split_col!r}, row {bad[0]}: split {bad[1]!r} is not one of "
                            f"{sorted(SPLIT_NAMES)}")
        mapped = np.array([SPLIT_NAMES[v] for v in names])
        return {s: np.flatnonzero(mapped == s) for s in SPLITS}
    unknown = sorted(set(fractions) - set(SPLITS))
    if unknown or set(fractions) != set(SPLITS):
        raise ConfigError(f"datasets_cfg/{cfg.name}.yaml: data.fractions needs exactly train, val and test; got "
                          f"{sorted(fractions)}")
    shares = SplitFractions.of(**{s: float(fractions[s]) for s in SPLITS})
    return stratified_group_split(labels if labels is not None else [0] * len(ds),
                                  list(ds[group]) if group else None, shares, seed)


def class_index(cfg: DatasetConfig, values: Sequence[Any], classes: str | Sequence[Any],
                column: str) -> tuple[list[int], list[Any]]:
    """Map raw label values to 0..K-1: a `classes` list gives the order, `auto` the sorted distinct values."""
    if isinstance(classes, str):
        if classes != "auto":
            raise ConfigError(f"datasets_cfg/{cfg.name}.yaml: data.classes={classes!r}; give a list of label values or 'auto'")
        present = {v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))}
        order = sorted(present, key=lambda v: (str(type(v)), v))
    else:
        order = list(classes)
    if len(order) != cfg.num_classes:
        raise ConfigError(f"datasets_cfg/{cfg.name}.yaml: num_classes is {cfg.num_classes} but the classes are "
                          f"{order} ({len(order)}); set num_classes: {len(order)} or list data.classes")
    index = {v: i for i, v in enumerate(order)}
    out = []
    for row, v in enumerate(values):
        if v not in index:
            raise DataError(f"{cfg.name}: column {column!r}, row {row}: label {v!r} is not among the classes {order}; "
                            f"add it to data.classes or fix the row")
        out.append(index[v])
    return out, order


@dataclass(frozen=True)
class TableParams:
    """`data:` of the `table` builder (see the module docstring)."""

    path: str
    files: Any  # glob or list of globs: the whole table
    label: str
    classes: Any = "auto"
    split: str | None = None
    fractions: dict[str, float] = field(default_factory=lambda: {"train": 0.7, "val": 0.1, "test": 0.2})
    group: str | None = None
    cluster: str | None = None
    split_seed: int = 0


@BUILDERS.register("table")
def build_table(cfg: DatasetConfig, root: Path, sizes: SplitSizes) -> TaskTables:
    p = _params(TableParams, cfg)
    cols = [v.column for v in cfg.views.values()] + [p.label] + [c for c in (p.split, p.group, p.cluster) if c]
    ds, sources = _load(cfg, root, p.path, p.files, cols)
    labels, _ = class_index(cfg, list(ds[p.label]), p.classes, p.label)
    cluster_col = p.cluster or p.group
    clusters = [str(v) for v in ds[cluster_col]] if cluster_col else [str(i) for i in range(len(ds))]
    table = ds.remove_columns([c for c in (p.label, "label", "group", "cluster") if c in ds.column_names])
    table = table.add_column("label", labels).add_column("cluster", clusters)
    if p.group:
        table = table.add_column("group", [str(v) for v in ds[p.group]])
    parts = _assign(cfg, ds, p.split, p.fractions, labels, p.group, p.split_seed)
    out = {}
    for split in SPLITS:
        rows = parts[split]
        out[split] = table.select(rows[limit_rows(len(rows), getattr(sizes, split))])
    return TaskTables(out, _fingerprint(cfg, sizes, sources), sources)


@dataclass(frozen=True)
class MatchingParams:
    """`data:` of the `matching` builder (see the module docstring)."""

    path: str
    files: Any
    image: str  # column of encoded image bytes (JPEG/PNG)
    caption: str  # column of a caption or a list of captions
    split: str | None = None
    fractions: dict[str, float] = field(default_factory=lambda: {"train": 0.7, "val": 0.1, "test": 0.2})
    group: str | None = None  # images with equal values stay in one split (e.g. a photographer, an album)
    pairing_seed: int = 0


def _captions(cfg: DatasetConfig, value: Any, row: int, column: str) -> list[str]:
    caps = [value] if isinstance(value, str) else list(value or [])
    caps = [c for c in caps if isinstance(c, str) and c.strip()]
    if not caps:
        raise DataError(f"{cfg.name}: column {column!r}, row {row}: no non-empty caption ({value!r})")
    return caps


@BUILDERS.register("matching")
def build_matching(cfg: DatasetConfig, root: Path, sizes: SplitSizes) -> TaskTables:
    p = _params(MatchingParams, cfg)
    if cfg.num_classes != 2:
        raise ConfigError(f"datasets_cfg/{cfg.name}.yaml: a matching task has num_classes: 2, got {cfg.num_classes}")
    ds, sources = _load(cfg, root, p.path, p.files, [p.image, p.caption] + [c for c in (p.split, p.group) if c])
    parts = _assign(cfg, ds, p.split, p.fractions, None, p.group, p.pairing_seed)
    out = {}
    for i, split in enumerate(SPLITS):
        rows = parts[split][limit_rows(len(parts[split]), getattr(sizes, split))]
        n = len(rows)
        if n < 2:
            raise DataError(f"{cfg.name}: split {split} has {n} images; matching needs at least 2")
        sub = ds.select(rows)
        caps = [_captions(cfg, v, int(r), p.caption) for v, r in zip(sub[p.caption], rows)]
        rng = np.random.default_rng([p.pairing_seed, i])
        other = (np.arange(n) + rng.integers(1, n, size=n)) % n  # never the same image
        positives = [c[rng.integers(len(c))] for c in caps]
        negatives = [caps[o][rng.integers(len(caps[o]))] for o in other]
        images = list(sub[p.image])
        ids = [str(int(r)) for r in rows]
        out[split] = datasets.Dataset.from_dict({
            "image": images + images, "caption": positives + negatives, "label": [1] * n + [0] * n,
            "group": list(range(n)) * 2, "cluster": ids * 2,  # both pairs of an image are one cluster
        })
    return TaskTables(out, _fingerprint(cfg, sizes, sources), sources)
