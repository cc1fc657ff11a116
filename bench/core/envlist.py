"""Path-list environment variables (`$FUSEBENCH_CONFIG_DIR`, `$FUSEBENCH_PLUGINS`) extended for one command.

The command-line options `--config-dir` and `--plugin` are turned into these variables rather than
passed around, so that every worker process the command spawns (which inherits the environment)
sees the same configs and plugins.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


@contextlib.contextmanager
def prepend_env(var: str, items: list[str]) -> Iterator[None]:
    """Prepend `items` to the `os.pathsep`-joined list in `var`, restoring the variable afterwards."""
    before = os.environ.get(var)
    if items:
        os.environ[var] = os.pathsep.join(items + ([before] if before else []))
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = before
