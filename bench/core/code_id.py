"""`code_id(*classes)`: a short hash of the source files that define a model's classes, so that a record
says which strategy code scored it.

Why: the standard suite runs over many sessions while the code moves on (stop 29 changed `lmf` and
`tensor_fusion`; the fidelity fixes changed seven strategies before). A record knew its run's git
revision (run.json `sessions`) but not whether its strategy's code had changed since: a stored seed of
the old code was kept beside seeds of the new, and a finished cell scored by code the checkout no longer
has looked like any other. With `code_id` in the record, the seed store retrains such a seed and
`fusebench timing status` names the finished cells to `forget`.

What is hashed: the module of every class in the given classes' MROs (torch's and the standard library's
left out), and, transitively, every module those modules use whose name is under
`fusebench.strategies` or under a plugin's own top-level package: a change to a strategy's file, to a
building block it imports, or to `strategies/base.py` changes the id; a change to the training loop or
to an unrelated strategy's file does not. Each module contributes its name and its file's bytes.
"""

from __future__ import annotations

import hashlib
import sys
import types
from functools import lru_cache
from pathlib import Path

SKIPPED = ("builtins", "abc", "typing", "collections", "torch", "enum", "dataclasses")


def code_id(*classes: type) -> str:
    """16 hex digits of sha256 over the defining modules of `classes` (module docstring)."""
    digest = hashlib.sha256()
    for name in defining_modules(*classes):
        digest.update(name.encode() + b"\0" + _source(getattr(sys.modules.get(name), "__file__", None)) + b"\0")
    return digest.hexdigest()[:16]


def defining_modules(*classes: type) -> list[str]:
    """The modules `code_id` hashes, sorted."""
    mods = {c.__module__ for cls in classes for c in cls.__mro__ if not c.__module__.startswith(SKIPPED)}
    prefixes = ("fusebench.strategies.", *sorted({m.split(".")[0] + "." for m in mods if not m.startswith("fusebench")}))
    todo = sorted(mods)
    while todo:
        module = sys.modules.get(todo.pop())
        for value in list(vars(module).values()) if module else []:
            dep = value.__name__ if isinstance(value, types.ModuleType) else getattr(value, "__module__", None)
            if isinstance(dep, str) and dep not in mods and (dep + ".").startswith(prefixes):
                mods.add(dep)
                todo.append(dep)
    return sorted(mods)


@lru_cache(maxsize=256)
def _source(path: str | None) -> bytes:
    try:
        return Path(path).read_bytes() if path else b""
    except OSError:
        return b""
