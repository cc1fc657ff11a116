"""A small typed registry shared by strategies, tasks, encoders, metrics and builders.

Modelled on lm-evaluation-harness's registry: registering the same name twice is an error, and
looking up an unknown name raises a `UsageError` that suggests the closest names and lists what
exists, so that a typo on the command line gets an answer instead of a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from fusebench.core.errors import UsageError

T = TypeVar("T")


class UnknownNameError(UsageError, KeyError):
    """Lookup of a name that is not registered."""

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0])


class Registry(Generic[T]):
    """Name → entry mapping with did-you-mean errors.

    Args:
        kind: what the entries are ("strategy", "dataset", ...), used in error messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        if not name or name != name.strip():
            raise ValueError(f"invalid {self.kind} name {name!r}")
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of `add`."""

        def decorate(entry: T) -> T:
            return self.add(name, entry)

        return decorate

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(name, list(self._entries), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        available = ", ".join(sorted(self._entries)) or "(none)"
        return f"unknown {self.kind} {name!r}.{hint} Available: {available}"

    def names(self) -> list[str]:
        return sorted(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._entries.items())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
