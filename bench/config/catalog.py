"""Registries of datasets and suites, discovered from YAML files in the config search path.

A dataset is `<dir>/<name>.yaml` (files starting with `_` are shared includes); a suite is
`<dir>/suites/<name>.yaml`. Adding a parquet dataset needs a YAML file and no Python.

The search path is additive: the user's config directories (`--config-dir DIR`, repeatable, and
`$FUSEBENCH_CONFIG_DIR`, a list joined with `os.pathsep`) come first, the built-in configs
(package data `fusebench.datasets_cfg`) last. A name found in several directories resolves to the
first one; a user file that shadows a name from a later directory (a built-in, typically) must say
`override: true`, so that a built-in is never replaced by accident.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from fusebench.config.loader import (
    CONFIG_ROOT,
    DatasetConfig,
    SuiteConfig,
    load_dataset_config,
    load_located,
    load_suite_config,
    where,
)
from fusebench.core.errors import ConfigError, UsageError
from fusebench.core.registry import Registry

ENV_VAR = "FUSEBENCH_CONFIG_DIR"


def user_config_dirs() -> list[Path]:
    """The user's config directories from `$FUSEBENCH_CONFIG_DIR` (`--config-dir` prepends to it), in order.

    Each must be an existing directory: a typo would otherwise silently hide the user's datasets.
    """
    out: list[Path] = []
    for part in os.environ.get(ENV_VAR, "").split(os.pathsep):
        if not part.strip():
            continue
        path = Path(part).expanduser()
        if not path.is_dir():
            raise ConfigError(f"config directory {path} (from --config-dir or ${ENV_VAR}) does not exist or is not a "
                              f"directory; pass a folder holding <dataset>.yaml files and/or suites/<suite>.yaml")
        out.append(path.resolve())
    return out


def config_dirs() -> list[Path]:
    """The whole search path: user directories first, then the built-in configs."""
    dirs: list[Path] = []
    for d in user_config_dirs():  # a folder named twice (flag and variable) is searched once
        if d not in dirs and d != CONFIG_ROOT.resolve():
            dirs.append(d)
    return dirs + [CONFIG_ROOT]


def _declares_override(path: Path) -> bool:
    return load_located(path).data.get("override") is True


def _collect(kind: str, sub: str, roots: list[Path] | None) -> Registry[Path]:
    """Name → file over the search path; a shadowing file needs `override: true` (else ConfigError)."""
    found: dict[str, list[Path]] = {}
    for root in roots if roots is not None else config_dirs():
        for path in sorted((root / sub).glob("*.yaml")):
            if not path.name.startswith("_"):
                found.setdefault(path.stem, []).append(path)
    reg: Registry[Path] = Registry(kind)
    for name, paths in sorted(found.items()):
        winner, shadowed = paths[0], paths[1:]
        if shadowed and not _declares_override(winner):
            raise ConfigError(
                f"{winner}: {kind} {name!r} is also defined in {shadowed[0]}; add `override: true` to {winner.name} "
                f"to replace it on purpose, or rename the file (and its `name:`)"
            )
        reg.add(name, winner)
    return reg


def dataset_files(root: Path | None = None) -> Registry[Path]:
    """Every dataset YAML on the search path (or only under `root`)."""
    return _collect("dataset", ".", [root] if root else None)


def suite_files(root: Path | None = None) -> Registry[Path]:
    """Every suite YAML on the search path (or only under `root`)."""
    return _collect("suite", "suites", [root] if root else None)


def get_dataset(name: str, root: Path | None = None) -> DatasetConfig:
    path = dataset_files(root).get(name)
    cfg = load_dataset_config(path)
    if cfg.name != name:
        raise ConfigError(f"{path}: name {cfg.name!r} must equal the file name {name!r}")
    return cfg


def get_suite(name: str, root: Path | None = None,
              check_strategy: Callable[[str, frozenset[str]], object] | None = None) -> SuiteConfig:
    """The suite `name`; its datasets must exist. With `check_strategy` (the run's check of a selection against
    the views of the suite's datasets, passed in by the caller that runs them) the suite must list datasets and
    strategies, and each strategy must pass it; else a ConfigError names the file and line."""
    path = suite_files(root).get(name)
    cfg = load_suite_config(path)
    if cfg.name != name:
        raise ConfigError(f"{path}: name {cfg.name!r} must equal the file name {name!r}")
    reg = dataset_files(root)
    for i, ds in enumerate(cfg.datasets):
        if ds not in reg:
            raise ConfigError(f"{where(load_located(path), ('datasets', str(i)))}: datasets lists {reg.unknown_message(ds)}")
    if check_strategy is None:  # `list suites` lists a suite whatever its strategies
        return cfg
    for key, example in (("datasets", "[imdb]"), ("strategies", "[concat, unimodal] or [all]")):
        if not getattr(cfg, key):
            raise ConfigError(f"{where(load_located(path), (key,))}: {key} lists none; name at least one, e.g. {key}: {example}")
    views = frozenset(v for ds in cfg.datasets for v in get_dataset(ds, root).views)
    for i, strategy in enumerate(() if cfg.strategies == ("all",) else cfg.strategies):
        try:
            check_strategy(strategy, views)
        except UsageError as exc:
            raise ConfigError(f"{where(load_located(path), ('strategies', str(i)))}: strategies[{i}]: {exc}") from None
    return cfg
