"""The user's extensions for one command: config directories (`--config-dir`) and plugins (`--plugin`).

Both are global options, accepted before and after the subcommand. They are applied by extending the
path-list variables `$FUSEBENCH_CONFIG_DIR` and `$FUSEBENCH_PLUGINS` for the duration of the command,
so that every worker process the command spawns (it inherits the environment) sees the same
datasets, suites and strategies; plugins are loaded into this process before the command runs.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from pathlib import Path

from fusebench.config.catalog import ENV_VAR as CONFIG_ENV
from fusebench.core.envlist import prepend_env
from fusebench.core.plugins import ENV_VAR as PLUGIN_ENV
from fusebench.core.plugins import is_file_spec, load_plugins

_OPTIONS: dict[str, dict] = {
    "--config-dir": {
        "action": "append", "dest": "config_dir", "default": argparse.SUPPRESS, "metavar": "DIR",
        "help": "a folder of your own dataset YAMLs (and suites/*.yaml), searched before the built-ins; repeatable "
                "(also $FUSEBENCH_CONFIG_DIR, a list joined with the OS path separator)",
    },
    "--plugin": {
        "action": "append", "dest": "plugin", "default": argparse.SUPPRESS, "metavar": "MODULE",
        "help": "import a module or .py file that registers strategies/encoders (repeatable; also "
                "$FUSEBENCH_PLUGINS); worker processes load it too",
    },
}


def add_options(parser: argparse.ArgumentParser, after_command: bool = False) -> None:
    """Add --config-dir and --plugin; the subcommands' copies keep their own dest so neither position is lost."""
    for flag, kw in _OPTIONS.items():
        parser.add_argument(flag, **({**kw, "dest": kw["dest"] + "_after"} if after_command else kw))


def given(args: argparse.Namespace, name: str) -> list[str]:
    """A global repeatable option given before and/or after the command, in command-line order."""
    return list(getattr(args, name, [])) + list(getattr(args, f"{name}_after", []))


def plugin_path(spec: str) -> str:
    """A plugin file as an absolute path (workers may run elsewhere); a module name unchanged."""
    return str(Path(spec).expanduser().resolve()) if is_file_spec(spec) else spec


@contextlib.contextmanager
def applied(args: argparse.Namespace) -> Iterator[None]:
    """Extend the variables for the command, load the plugins here, restore the variables afterwards."""
    dirs = [str(Path(d).expanduser().resolve()) for d in given(args, "config_dir")]
    plugins = [plugin_path(p) for p in given(args, "plugin")]
    with prepend_env(CONFIG_ENV, dirs), prepend_env(PLUGIN_ENV, plugins):
        if plugins:
            import fusebench.strategies  # noqa: F401  (its first import loads $FUSEBENCH_PLUGINS)

            load_plugins("fusebench.strategies")  # already imported (tests, embedding): load the new ones
        yield
