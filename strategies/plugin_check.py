"""`fusebench check-strategy MODULE`: the generated contract tests, run on a plugin's strategies.

The contract tests (`fusebench.strategies.contract_tests`, shipped in the package so that a wheel has
them; tests/test_strategy_contract.py collects them for the project's suite) are generated from the strategy registry, and
the registry loads `$FUSEBENCH_PLUGINS`; so checking a plugin is running those same tests with the
plugin named in that variable, restricted to the strategies the plugin registers. They run in a
pytest subprocess so that the result is exactly what CI would see.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from fusebench.core.errors import UsageError
from fusebench.core.paths import checkout_root
from fusebench.core.plugins import ENV_VAR, load_plugin
from fusebench.strategies.base import STRATEGIES


def plugin_strategies(spec: str) -> list[str]:
    """Names of the strategies whose class is defined in the plugin module `spec`."""
    module = load_plugin(spec)
    return [name for name, info in STRATEGIES.items() if info.cls.__module__ == module.__name__]


def contract_tests_file() -> Path:
    """The contract tests' file: inside the package, so a wheel has it as well as a checkout."""
    spec = importlib.util.find_spec("fusebench.strategies.contract_tests")
    if spec is None or spec.origin is None:  # a broken install
        raise UsageError("fusebench.strategies.contract_tests is missing from this install: reinstall fusebench")
    return Path(spec.origin)


def check_strategy(spec: str, pytest_args: list[str]) -> int:
    """Run the contract tests on the strategies of plugin `spec`; pytest's exit status (0 = all pass)."""
    names = plugin_strategies(spec)
    if not names:
        raise UsageError(f"plugin {spec!r} registers no strategy: decorate a FusionModel subclass with "
                         f"@register_strategy(...) (see README, 'Add a strategy')")
    try:
        import pytest  # noqa: F401
    except ImportError:
        raise UsageError("check-strategy needs pytest: install fusebench's test extras (pip install 'fusebench[test]')") from None
    tests = contract_tests_file()
    env = dict(os.environ)
    env[ENV_VAR] = os.pathsep.join([spec] + ([env[ENV_VAR]] if env.get(ENV_VAR) else []))
    selected = " or ".join(f"[{n}-" for n in names)
    # from a checkout, the project's own pytest settings apply (pyproject.toml above the file); from a
    # wheel there are none, and nothing is written into site-packages (no cache folder)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests), "-k", selected, *pytest_args]
    print(f"fusebench: contract tests for {', '.join(names)} ({spec})", flush=True)
    root = checkout_root()
    return subprocess.run(cmd, cwd=root if root else None, env=env, check=False).returncode
