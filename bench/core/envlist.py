"""Environment variables set for one command: path lists (`$FUSEBENCH_CONFIG_DIR`, `$FUSEBENCH_PLUGINS`)
extended, and single values (`$FUSEBENCH_STOP_AT`, bench/core/deadline.py) set, then restored.

The command-line options `--config-dir` and `--plugin` are turned into these variables rather than
passed around, so that every worker process the command spawns (which inherits the environment)
sees the same configs and plugins.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


@contextlib.contextmanager
def scoped_env(var: str, value: str | None) -> Iterator[None]:
    """Set `var` to `value` (None: unset it) for this process and the processes it starts, until the
    block ends; then put back what it was (unset when it was unset)."""
    before = os.environ.get(var)
    if value is None:
        os.environ.pop(var, None)
    else:
        os.environ[var] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = before


def prepend_env(var: str, items: list[str]) -> contextlib.AbstractContextManager[None]:
    """Prepend `items` to the `os.pathsep`-joined list in `var`, restoring the variable afterwards."""
    before = os.environ.get(var)
    return scoped_env(var, os.pathsep.join(items + ([before] if before else [])) if items else before)
