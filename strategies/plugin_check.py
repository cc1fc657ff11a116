"""`fusebench check-strategy MODULE`: the generated contract tests, run on a plugin's strategies.

The contract tests (`tests/test_strategy_contract.py`) are generated from the strategy registry, and
the registry loads `$FUSEBENCH_PLUGINS`; so checking a plugin is running those same tests with the
plugin named in that variable, restricted to the strategies the plugin registers. They run in a
pytest subprocess so that the result is exactly what CI would see.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from fusebench.core.errors import UsageError
from fusebench.core.paths import checkout_root
from fusebench.core.plugins import ENV_VAR, load_plugin
from fusebench.strategies.base import STRATEGIES

CONTRACT_TESTS = Path("tests") / "test_strategy_contract.py"


def plugin_strategies(spec: str) -> list[str]:
    """Names of the strategies whose class is defined in the plugin module `spec`."""
    module = load_plugin(spec)
    return [name for name, info in STRATEGIES.items() if info.cls.__module__ == module.__name__]


def contract_tests_file() -> Path:
    root = checkout_root()
    path = root / CONTRACT_TESTS if root else None
    if path is None or not path.is_file():
        raise UsageError(f"the contract tests ({CONTRACT_TESTS}) ship with fusebench's source, not the wheel: run "
                         f"check-strategy from a checkout (git clone, then `bash scripts/bootstrap.sh`)")
    return path


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
    cmd = [sys.executable, "-m", "pytest", "-q", str(tests), "-k", selected, *pytest_args]
    print(f"fusebench: contract tests for {', '.join(names)} ({spec})", flush=True)
    return subprocess.run(cmd, cwd=tests.parents[1], env=env, check=False).returncode
