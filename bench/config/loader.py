"""YAML configs → frozen dataclasses, strictly.

Every config file is read with line numbers kept, so an unknown or malformed key is reported as
`file:line: ...` with the closest valid key. `include: other.yaml` (a path relative to the file, or
a list of them) merges shared defaults underneath the file's own keys (deep merge for mappings); a
name not found next to the file is looked up among the built-in configs, so a user's dataset can
`include: _defaults.yaml`.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from fusebench.core.encmode import EncoderMode, FineTuneSettings
from fusebench.core.errors import ConfigError


def _builtin_config_root() -> Path:
    """The built-in YAML configs: the `datasets_cfg/` folder, shipped as package data `fusebench.datasets_cfg`."""
    spec = importlib.util.find_spec("fusebench.datasets_cfg")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the built-in configs (package fusebench.datasets_cfg) are missing: reinstall fusebench")
    return Path(next(iter(spec.submodule_search_locations)))


CONFIG_ROOT = _builtin_config_root()


@dataclass(frozen=True)
class Located:
    """A loaded YAML document with the line of every key path, for error messages."""

    data: dict[str, Any]
    lines: dict[tuple[str, ...], tuple[Path, int]]
    file: Path | None = None  # the file that was asked for (not an include): blamed for missing keys


_PLAIN_TAGS = ("tag:yaml.org,2002:",)
_UNSAFE_TAGS = ("tag:yaml.org,2002:python",)


def _compose(node: yaml.Node, path: tuple[str, ...], file: Path, lines: dict) -> Any:
    if node.tag.startswith(_UNSAFE_TAGS) or not node.tag.startswith(_PLAIN_TAGS):
        raise ConfigError(f"{file}:{node.start_mark.line + 1}: YAML tag {node.tag!r} at {'.'.join(path) or 'top level'} "
                          "is not allowed: configs hold plain values only; remove the tag")
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = key_node.value
            if key in out:
                raise ConfigError(f"{file}:{key_node.start_mark.line + 1}: duplicate key {key!r}")
            lines[path + (key,)] = (file, key_node.start_mark.line + 1)
            out[key] = _compose(value_node, path + (key,), file, lines)
        return out
    if isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):  # a list item's own line: "strategies[1]" is blamed where it is written
            lines[path + (str(i),)] = (file, v.start_mark.line + 1)
        return [_compose(v, path + (str(i),), file, lines) for i, v in enumerate(node.value)]
    return yaml.safe_load(yaml.serialize(node))


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _include_path(path: Path, inc: str) -> Path:
    """`inc` next to the including file, else among the built-in configs (their root, then `suites/`)."""
    for candidate in (path.parent / inc, CONFIG_ROOT / inc, CONFIG_ROOT / "suites" / inc):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"{path}: include {inc!r} not found next to the file ({path.parent}) nor among the built-in "
                      f"configs ({CONFIG_ROOT}); built-in includes: "
                      f"{', '.join(sorted(p.name for p in CONFIG_ROOT.glob('_*.yaml'))) or '(none)'}")


def load_located(path: Path, _seen: tuple[Path, ...] = ()) -> Located:
    """Read a YAML mapping with its key lines, resolving `include:` recursively."""
    path = path.resolve()
    if path in _seen:
        raise ConfigError(f"{path}: include cycle through {[str(p) for p in _seen]}")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        node = yaml.compose(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: malformed YAML: {exc}") from None
    lines: dict[tuple[str, ...], tuple[Path, int]] = {}
    data = _compose(node, (), path, lines) if node is not None else {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: the top level must be a mapping of keys, got {type(data).__name__}")
    includes = data.pop("include", [])
    includes = [includes] if isinstance(includes, str) else includes
    merged: dict[str, Any] = {}
    merged_lines: dict[tuple[str, ...], tuple[Path, int]] = {}
    for inc in includes:
        sub = load_located(_include_path(path, inc), _seen + (path,))
        merged = _merge(merged, sub.data)
        merged_lines.update(sub.lines)
    merged_lines.update(lines)
    return Located(_merge(merged, data), merged_lines, path)


class FieldError(ValueError):
    """A schema's `__post_init__` check that a field (or list item: `("strategies", "3")`) breaks, so that
    the error names that field's own line rather than the top of the mapping. With several paths (a
    check between two fields), the first one written in the file being loaded is blamed, not a default
    an `include:` brought in."""

    def __init__(self, paths: tuple[str, ...] | list[tuple[str, ...]], message: str) -> None:
        super().__init__(message)
        self.paths = [paths] if isinstance(paths, tuple) else list(paths)

    def __reduce__(self) -> tuple[type, tuple[Any, ...]]:  # picklable, with its paths
        return type(self), (self.paths, str(self))


def dotted(path: tuple[str, ...], data: Any = None) -> str:
    """`finetune.encoder_lr`, `views.image.options`, `strategies[3]`: a list item by its index in brackets,
    as `get_suite`'s check names it. `data` (the loaded mapping) tells a list index from a mapping key
    written in digits; without it, digits are read as an index."""
    out, node = "", data
    for part in path:
        index = isinstance(node, list) if data is not None else part.isdigit()
        out += f"[{part}]" if index else f".{part}" if out else part
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            node = node.get(part) if isinstance(node, dict) else None
    return out


def _blamed(loc: Located, path: tuple[str, ...], paths: list[tuple[str, ...]]) -> tuple[str, ...]:
    """Of `paths` (relative to `path`), the first whose line is in the file being loaded, else the first."""
    full = [path + p for p in paths]
    own = [p for p in full if p in loc.lines and loc.lines[p][0] == loc.file]
    return (own or full)[0]


def where(loc: Located, path: tuple[str, ...]) -> str:
    while path and path not in loc.lines:
        path = path[:-1]
    if path in loc.lines:
        file, line = loc.lines[path]
        return f"{file}:{line}"
    if loc.file is not None:
        return str(loc.file)
    return next(iter(loc.lines.values()), ("<config>", 0))[0].__str__()


def _convert(value: Any, hint: Any, loc: Located, path: tuple[str, ...]) -> Any:
    origin = get_origin(hint)
    name = dotted(path, loc.data)
    if hint is Any:
        return value
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{where(loc, path)}: {name} must be a mapping, got {value!r}")
        return build_dataclass(hint, value, loc, path)
    if origin in (Union, types.UnionType):
        args = get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, loc, path)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0] if len(errors) == 1 else ConfigError(f"{where(loc, path)}: {name}={value!r} matches none of {hint}")
    if origin is Literal:
        if value not in get_args(hint):
            close = difflib.get_close_matches(str(value), [str(a) for a in get_args(hint)], n=1)
            hint_txt = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{where(loc, path)}: {name}={value!r} is not one of {list(get_args(hint))}.{hint_txt}")
        return value
    if origin in (dict, typing.Mapping) or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where(loc, path)}: {name} must be a mapping, got {value!r}")
        _k_hint, v_hint = get_args(hint) or (str, Any)
        return {k: _convert(v, v_hint, loc, path + (k,)) for k, v in value.items()}
    if origin in (tuple, list) or hint in (tuple, list):
        if not isinstance(value, list):
            as_list = yaml.safe_dump([value], default_flow_style=True).strip()  # quoted where YAML needs it
            fix = f"; write it as a list: {as_list}" if isinstance(value, str) else ""
            raise ConfigError(f"{where(loc, path)}: {name} must be a list, got {value!r}{fix}")
        args = get_args(hint)
        item_hint = args[0] if args else Any
        return tuple(_convert(v, item_hint, loc, path + (str(i),)) for i, v in enumerate(value))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool):
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise ConfigError(
                f"{where(loc, path)}: {name} must be {hint.__name__}, got {value!r} ({type(value).__name__})"
            )
        return value
    return value


def build_dataclass(cls: type, data: dict[str, Any], loc: Located, path: tuple[str, ...] = ()) -> Any:
    """Construct `cls` from a mapping; unknown keys and wrong types raise ConfigError with file:line."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"{where(loc, path + (key,))}: unknown key {dotted(path + (key,), loc.data)!r}.{hint} "
                f"Valid keys here: {', '.join(sorted(fields))}"
            )
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], loc, path + (name,))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where(loc, path)}: missing required key {dotted(path + (name,), loc.data)!r}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        blamed = _blamed(loc, path, exc.paths) if isinstance(exc, FieldError) else path  # the field's own line
        raise ConfigError(f"{where(loc, blamed)}: invalid {dotted(path, loc.data) or cls.__name__}: {exc}") from None


# --------------------------------------------------------------------------------------------
# The schemas


@dataclass(frozen=True)
class ViewConfig:
    """One input view of a task: which column feeds which encoder."""

    column: str
    encoder: str
    modality: Literal["text", "image", "audio"]
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SplitSizes:
    """Row limits per split (None = all rows); applied before pairing, with a pinned seed."""

    train: int | None = None
    val: int | None = None
    test: int | None = None


@dataclass(frozen=True)
class DatasetConfig:
    """A task: where its data is, how it is built, which views and metrics it has."""

    name: str
    task: Literal["classification", "itm", "retrieval"]
    builder: str
    description: str
    citation: str
    num_classes: int
    main_metric: str
    metrics: tuple[str, ...]
    views: dict[str, ViewConfig]
    data: dict[str, Any] = field(default_factory=dict)
    sizes: dict[str, SplitSizes] = field(default_factory=dict)
    override: bool = False  # a user file that replaces a built-in of the same name must say so (config.catalog)

    def __post_init__(self) -> None:
        if self.main_metric not in self.metrics:
            raise FieldError([("main_metric",), ("metrics",)],
                             f"main_metric {self.main_metric!r} must be listed in metrics {list(self.metrics)}")
        if self.task == "retrieval" and self.main_metric != "rsum":  # what its cells score and its statistics test
            raise FieldError([("main_metric",), ("task",)],
                             f"main_metric {self.main_metric!r}: a retrieval task's main metric is rsum "
                             "(R@1+R@5+R@10 of both directions); set main_metric: rsum (the other metrics are shown beside it)")
        if len(self.views) < 1:
            raise FieldError(("views",), "a dataset needs at least one view")


@dataclass(frozen=True)
class SuiteConfig:
    """A named benchmark: datasets × strategies under one budget."""

    name: str
    description: str
    datasets: tuple[str, ...]
    strategies: tuple[str, ...] = ("all",)
    size: str = "full"  # key into DatasetConfig.sizes; "full" = every row
    trials: int = 8
    timeout_s: float = 600.0
    seeds: int = 5  # K evaluation seeds per search replicate
    replicates: int = 1  # R independent searches per cell (distinct sampler seeds and study names)
    epochs: int = 30  # raised per task when fewer epochs than min_steps optimiser steps would allow
    patience: int = 5  # early stopping: evaluations (epochs) without improvement, and ...
    patience_steps: int = 100  # ... at least this many optimiser steps without improvement
    min_steps: int = 200  # never stop before this many optimiser steps (bench/training/stopping.py)
    min_delta: float = 1e-3  # an improvement of the validation loss must exceed this
    monitor: str = "val_loss"  # early-stopping quantity: val_loss (smooth) or val_metric
    batch_size: int = 128
    search_seed: int = 0
    jobs: int = 1  # parallel cell workers on CPU or a CUDA GPU (an execution detail, but on a GPU the search cap
    # counts wall seconds, which the other workers' cells lengthen: README, The cap)
    modality_dropout: float = 0.0  # training option applied to every strategy (strategies.training_options)
    gradient_blending: bool = False  # G-Blend loss weighting; strategies without unimodal branches fail clearly
    override: bool = False  # a user file that replaces a built-in of the same name must say so (config.catalog)
    rerank_k: int = 10  # retrieval tasks: how many dual-encoder candidates per query a fusion re-ranker re-scores
    # retrieval tasks: a re-ranker's mismatched training pairs — "random" (a caption of another image, as in
    # flickr8k-itm) or "hard" (mined from the dual encoder's top rerank_k candidates; docs/retrieval.md)
    rerank_negatives: Literal["random", "hard"] = "random"
    trial_batch: int = 1  # search trials asked together and trained as one batched model where they can (1: one by one)
    # Encoder modes, each a row set of its own: frozen (cached features), last:N, full (docs/finetune.md).
    encoders: tuple[str, ...] | str = ("frozen",)
    finetune: FineTuneSettings = field(default_factory=FineTuneSettings)

    @property
    def encoder_modes(self) -> tuple[EncoderMode, ...]:
        return tuple(EncoderMode.parse(m) for m in self.encoders)

    def __post_init__(self) -> None:
        items = (self.encoders,) if isinstance(self.encoders, str) else tuple(self.encoders)
        modes = [(i, m.strip()) for i, part in enumerate(items) for m in str(part).split(",") if m.strip()]
        if not modes:
            raise FieldError(("encoders",), "encoders must name at least one mode (frozen, last:N, full)")
        canonical: list[str] = []
        for i, mode in modes:
            try:
                canonical.append(str(EncoderMode.parse(mode)))
            except ValueError as exc:  # a bad mode, blamed on its own list item's line
                raise FieldError(("encoders",) if isinstance(self.encoders, str) else ("encoders", str(i)), str(exc)) from None
        object.__setattr__(self, "encoders", tuple(dict.fromkeys(canonical)))
        for name in ("trials", "seeds", "replicates", "epochs", "batch_size", "jobs", "rerank_k", "trial_batch"):
            if getattr(self, name) < 1:
                raise FieldError((name,), f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.modality_dropout < 1.0:
            raise FieldError(("modality_dropout",), f"modality_dropout must be in [0, 1), got {self.modality_dropout}")
        bad = [n for n, low in (("patience", 1), ("patience_steps", 0), ("min_steps", 0), ("min_delta", 0))
               if getattr(self, n) < low]
        if bad:
            raise FieldError((bad[0],), f"patience >= 1 and patience_steps, min_steps, min_delta >= 0 required, got "
                             f"{self.patience}, {self.patience_steps}, {self.min_steps}, {self.min_delta}")
        if self.monitor not in ("val_loss", "val_metric"):
            raise FieldError(("monitor",), f"monitor must be 'val_loss' or 'val_metric', got {self.monitor!r}")
        if not self.timeout_s > 0:
            raise FieldError(("timeout_s",), f"timeout_s must be > 0, got {self.timeout_s}")
        for name in ("datasets", "strategies"):  # a twice-listed cell would run twice into one study and seed store
            object.__setattr__(self, name, tuple(str(n).strip() for n in getattr(self, name)))  # " concat" is concat
            names = list(getattr(self, name))
            twice = sorted({n for n in names if names.count(n) > 1})
            if twice:  # blamed on the line of the first repeat
                again = next(i for i, n in enumerate(names) if n in names[:i])
                raise FieldError((name, str(again)), f"{name} lists {', '.join(twice)} more than once; name each once")


def load_dataset_config(path: Path) -> DatasetConfig:
    loc = load_located(path)
    return build_dataclass(DatasetConfig, loc.data, loc)


def load_suite_config(path: Path) -> SuiteConfig:
    loc = load_located(path)
    return build_dataclass(SuiteConfig, loc.data, loc)
