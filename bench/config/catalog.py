"""Registries of datasets and suites, discovered from the YAML files in `datasets_cfg/`.

A dataset is `datasets_cfg/<name>.yaml` (files starting with `_` are shared includes); a suite is
`datasets_cfg/suites/<name>.yaml`. Adding a parquet dataset needs a YAML file and no Python.
"""

from __future__ import annotations

import os
from pathlib import Path

from fusebench.config.loader import CONFIG_ROOT, DatasetConfig, SuiteConfig, load_dataset_config, load_suite_config
from fusebench.core.errors import ConfigError
from fusebench.core.registry import Registry


def config_root() -> Path:
    """`$FUSEBENCH_CONFIG_DIR` (your own datasets and suites) or the repo's `datasets_cfg/`."""
    return Path(os.environ["FUSEBENCH_CONFIG_DIR"]) if os.environ.get("FUSEBENCH_CONFIG_DIR") else CONFIG_ROOT


def dataset_files(root: Path | None = None) -> Registry[Path]:
    root = root or config_root()
    reg: Registry[Path] = Registry("dataset")
    for path in sorted(root.glob("*.yaml")):
        if not path.name.startswith("_"):
            reg.add(path.stem, path)
    return reg


def suite_files(root: Path | None = None) -> Registry[Path]:
    root = root or config_root()
    reg: Registry[Path] = Registry("suite")
    for path in sorted((root / "suites").glob("*.yaml")):
        reg.add(path.stem, path)
    return reg


def get_dataset(name: str, root: Path | None = None) -> DatasetConfig:
    path = dataset_files(root).get(name)
    cfg = load_dataset_config(path)
    if cfg.name != name:
        raise ConfigError(f"{path}: name {cfg.name!r} must equal the file name {name!r}")
    return cfg


def get_suite(name: str, root: Path | None = None) -> SuiteConfig:
    path = suite_files(root).get(name)
    cfg = load_suite_config(path)
    if cfg.name != name:
        raise ConfigError(f"{path}: name {cfg.name!r} must equal the file name {name!r}")
    reg = dataset_files(root)
    for ds in cfg.datasets:
        if ds not in reg:
            raise ConfigError(f"{path}: datasets lists {reg.unknown_message(ds)}")
    return cfg
