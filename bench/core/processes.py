"""Is a process of this machine still alive? For leftovers named after the process that made them."""

from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """True if a process `pid` exists on this machine (one of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
