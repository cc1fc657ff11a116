"""Search-space declarations that live in dataclass field metadata.

A params dataclass is both the defaults and the optuna search space: each searchable field
carries one of these in `metadata["space"]`. Trial params are validated by constructing the
dataclass, so a value outside the space is rejected the same way whether it came from optuna, a
YAML file or a test.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import optuna


class Space(Protocol):
    def suggest(self, trial: optuna.Trial, name: str) -> Any: ...
    def contains(self, value: Any) -> bool: ...
    def describe(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class FloatRange:
    low: float
    high: float
    log: bool = False

    def suggest(self, trial: optuna.Trial, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high, log=self.log)

    def contains(self, value: Any) -> bool:
        return isinstance(value, (int, float)) and self.low <= value <= self.high

    def describe(self) -> dict[str, Any]:
        return {"type": "float", "low": self.low, "high": self.high, "log": self.log}


@dataclass(frozen=True)
class IntRange:
    low: int
    high: int
    step: int = 1
    log: bool = False

    def suggest(self, trial: optuna.Trial, name: str) -> int:
        return trial.suggest_int(name, self.low, self.high, step=self.step, log=self.log)

    def contains(self, value: Any) -> bool:
        return isinstance(value, int) and self.low <= value <= self.high

    def describe(self) -> dict[str, Any]:
        return {"type": "int", "low": self.low, "high": self.high, "step": self.step, "log": self.log}


@dataclass(frozen=True)
class Choice:
    options: tuple[Any, ...]

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        return trial.suggest_categorical(name, list(self.options))

    def contains(self, value: Any) -> bool:
        return value in self.options

    def describe(self) -> dict[str, Any]:
        return {"type": "categorical", "choices": list(self.options)}


def log_float(low: float, high: float) -> dict[str, Space]:
    """Field metadata: a float searched on a log scale."""
    return {"space": FloatRange(low, high, log=True)}


def float_range(low: float, high: float) -> dict[str, Space]:
    """Field metadata: a float searched uniformly."""
    return {"space": FloatRange(low, high)}


def int_range(low: int, high: int, step: int = 1) -> dict[str, Space]:
    """Field metadata: an integer searched uniformly."""
    return {"space": IntRange(low, high, step)}


def choice(options: Sequence[Any]) -> dict[str, Space]:
    """Field metadata: one of a fixed set of values."""
    return {"space": Choice(tuple(options))}


def fields_with_space(params_cls: type) -> list[tuple[dataclasses.Field, Space]]:
    return [(f, f.metadata["space"]) for f in dataclasses.fields(params_cls) if "space" in f.metadata]


def search_space(params_cls: type) -> dict[str, dict[str, Any]]:
    """The JSON-able description of a params dataclass's search space."""
    return {f.name: {**space.describe(), "default": f.default} for f, space in fields_with_space(params_cls)}


def space_changes(old: dict[str, dict[str, Any]], new: dict[str, dict[str, Any]]) -> list[str]:
    """What differs between two `search_space` descriptions, a field a line ("factor_dim: {...} → {...}");
    a changed default alone is no change: the search never draws it."""
    def searched(d: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if d is None else json.loads(json.dumps({k: v for k, v in d.items() if k != "default"}))  # as stored

    return [f"{name}: {json.dumps(searched(old.get(name)))} → {json.dumps(searched(new.get(name)))}"
            for name in sorted(set(old) | set(new)) if searched(old.get(name)) != searched(new.get(name))]


def sample_params(trial: optuna.Trial, params_cls: type) -> Any:
    """Ask optuna for one value per searchable field and build (thus validate) the params."""
    values = {f.name: space.suggest(trial, f.name) for f, space in fields_with_space(params_cls)}
    return params_cls(**values)


def validate_params(params: Any) -> None:
    """Raise ValueError naming the field when a value lies outside its declared space."""
    for f, space in fields_with_space(type(params)):
        value = getattr(params, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{type(params).__name__}.{f.name}={value!r} is not finite")
        if not space.contains(value):
            raise ValueError(
                f"{type(params).__name__}.{f.name}={value!r} lies outside its search space {space.describe()}"
            )


def params_from_dict(params_cls: type, values: dict[str, Any]) -> Any:
    """Rebuild params from a stored dict (a record or an optuna trial), rejecting unknown keys."""
    known = {f.name for f in dataclasses.fields(params_cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{params_cls.__name__} has no field(s) {unknown}; known: {sorted(known)}")
    return params_cls(**values)
