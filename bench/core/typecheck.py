"""Check plain values (from YAML/JSON) against a dataclass's type hints, strictly.

Used wherever user input becomes a frozen dataclass (encoder options, nested config sections) so a
wrong type is a clear error at load time (`options: {tokens: "8"}` names the key and the type it
needs) instead of a failure deep inside a run. Handles the hints configs use: bool/int/float/str,
None, unions (`X | None`), `Literal`, `list[...]`, `tuple[...]`, `dict[K, V]`, dataclasses and `Any`.
An int is accepted for a float; a bool is not accepted for an int.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any


def type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def problem(value: Any, hint: Any, where: str) -> str | None:
    """None when `value` fits `hint`, else a sentence naming `where`, the value and the expected type."""
    if hint is Any or hint is typing.Any:
        return None
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if all(problem(value, a, where) for a in args):
            return f"{where}: {value!r} is not {' or '.join(type_name(a) for a in args)}"
        return None
    if origin is typing.Literal:
        return None if value in args else f"{where}: {value!r} is not one of {list(args)}"
    if hint is type(None):
        return None if value is None else f"{where}: {value!r} should be empty (null)"
    if hint is bool:
        return None if isinstance(value, bool) else f"{where}: {value!r} is not a boolean (true/false)"
    if hint is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else f"{where}: {value!r} is not an integer"
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if ok else f"{where}: {value!r} is not a number"
    if hint is str:
        return None if isinstance(value, str) else f"{where}: {value!r} is not a string"
    if origin in (list, tuple, typing.Sequence, set, frozenset) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return f"{where}: {value!r} is not a list"
        inner = [a for a in args if a is not Ellipsis]
        if origin is tuple and inner and Ellipsis not in args and len(args) == len(value):
            pairs = list(zip(value, args))
        else:
            pairs = [(v, inner[0]) for v in value] if inner else []
        for i, (v, a) in enumerate(pairs):
            if msg := problem(v, a, f"{where}[{i}]"):
                return msg
        return None
    if origin in (dict, typing.Mapping) or hint is dict:
        if not isinstance(value, dict):
            return f"{where}: {value!r} is not a mapping"
        if len(args) == 2:
            for k, v in value.items():
                if msg := problem(k, args[0], f"{where} key") or problem(v, args[1], f"{where}.{k}"):
                    return msg
        return None
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if not isinstance(value, dict):
            return f"{where}: {value!r} is not a mapping"
        return dataclass_problem(hint, value, where)
    if isinstance(hint, type):
        return None if isinstance(value, hint) else f"{where}: {value!r} is not {type_name(hint)}"
    return None


def dataclass_problem(cls: type, values: dict[str, Any], where: str) -> str | None:
    """The first unknown key or ill-typed value of `values` for dataclass `cls`, or None."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        return f"{where}: unknown key(s) {unknown}; valid keys: {sorted(known)}"
    for key, value in values.items():
        if msg := problem(value, hints.get(key, Any), f"{where}.{key}"):
            return msg
    return None
