"""Plugins: strategies (and encoders) that live outside fusebench.

Two ways in, both loaded in every process that imports the registries (the CLI, the `--jobs N`
worker processes it spawns, `fusebench worker` on other machines), so a plugin strategy is
first-class everywhere:

- an installed package declares an entry point in group `fusebench.strategies` (or
  `fusebench.encoders`); importing the entry point's module registers what it defines;
- a module or a `.py` file that is not installed is named with `--plugin MODULE_OR_FILE`
  (repeatable) or `$FUSEBENCH_PLUGINS` (a list joined with `os.pathsep`). `--plugin` prepends to the
  variable, so worker processes, which inherit the environment, load the same plugins.

A plugin that fails to import is a `UsageError` (exit 2) naming the plugin and the exception.
This module only imports: it knows nothing of the registries (core is the lowest layer).
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

from fusebench.core.errors import UsageError

ENV_VAR = "FUSEBENCH_PLUGINS"
GROUPS = ("fusebench.strategies", "fusebench.encoders")
_LOADED: dict[str, ModuleType] = {}


def plugin_specs() -> list[str]:
    """The plugins named in `$FUSEBENCH_PLUGINS`, in order."""
    return [p.strip() for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p.strip()]


def is_file_spec(spec: str) -> bool:
    return spec.endswith(".py") or os.sep in spec or "/" in spec


def _load_file(path: Path) -> ModuleType:
    """Import a `.py` file as the top-level module named after its stem (so that pickles of its classes,
    sent to worker processes, resolve there too once the same plugin is loaded)."""
    if not path.is_file():
        raise UsageError(f"plugin file {path} does not exist (from --plugin or ${ENV_VAR})")
    name = path.stem
    existing = sys.modules.get(name)
    if existing is not None:
        if Path(getattr(existing, "__file__", "") or "").resolve() == path:
            return existing
        raise UsageError(f"plugin file {path}: a module named {name!r} is already imported from "
                         f"{getattr(existing, '__file__', '(built-in)')}; rename the file")
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UsageError(f"plugin file {path} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before exec: the plugin may import fusebench, which loads plugins again
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def load_plugin(spec: str) -> ModuleType:
    """Import one plugin (a module name or a `.py` file) once per process."""
    key = str(Path(spec).expanduser().resolve()) if is_file_spec(spec) else spec
    if key in _LOADED:
        return _LOADED[key]
    try:
        module = _load_file(Path(key)) if is_file_spec(spec) else importlib.import_module(spec)
    except UsageError:
        raise
    except ModuleNotFoundError as exc:
        raise UsageError(f"plugin {spec!r} (from --plugin or ${ENV_VAR}) cannot be imported: {exc}. Pass an importable "
                         f"module name or the path of a .py file") from None
    except Exception as exc:
        raise UsageError(f"plugin {spec!r} failed to import: {type(exc).__name__}: {exc}") from None
    _LOADED[key] = module
    return module


def load_entry_points(group: str) -> list[str]:
    """Import the modules of the installed entry points in `group`; returns their names."""
    names = []
    for ep in md.entry_points(group=group):
        key = f"entry-point:{group}:{ep.name}"
        if key in _LOADED:
            continue
        try:
            obj = ep.load()
        except Exception as exc:
            raise UsageError(f"entry point {ep.name!r} = {ep.value!r} in group {group!r} (installed package "
                             f"{ep.dist.name if ep.dist else '?'}) failed to load: {type(exc).__name__}: {exc}; "
                             f"fix or uninstall that package") from None
        _LOADED[key] = obj if isinstance(obj, ModuleType) else sys.modules[ep.module]
        names.append(ep.name)
    return names


def load_plugins(group: str) -> None:
    """Entry points of `group`, then every plugin of `$FUSEBENCH_PLUGINS` (idempotent)."""
    load_entry_points(group)
    for spec in plugin_specs():
        load_plugin(spec)
