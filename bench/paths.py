"""Where data and caches live. No path is hard-coded beyond the documented search order."""

from __future__ import annotations

import os
from pathlib import Path

from bench.errors import DataError

REPO_ROOT = Path(__file__).resolve().parent.parent


def data_root_candidates(explicit: str | os.PathLike | None = None) -> list[tuple[str, Path]]:
    """The data-root search order of DESIGN.md, each with the reason it is considered."""
    out: list[tuple[str, Path]] = []
    if explicit:
        out.append(("--data-dir", Path(explicit).expanduser()))
    if os.environ.get("FUSEBENCH_DATA"):
        out.append(("$FUSEBENCH_DATA", Path(os.environ["FUSEBENCH_DATA"]).expanduser()))
    out.append(("../shared/data next to the checkout", REPO_ROOT.parent / "shared" / "data"))
    out.append(("default cache", Path.home() / ".cache" / "fusebench" / "data"))
    return out


def resolve_data_root(explicit: str | os.PathLike | None = None) -> Path:
    """First existing candidate; an explicit --data-dir or $FUSEBENCH_DATA must exist."""
    candidates = data_root_candidates(explicit)
    for why, path in candidates:
        if path.is_dir():
            return path.resolve()
        if why in ("--data-dir", "$FUSEBENCH_DATA"):
            raise DataError(f"data root {path} (from {why}) does not exist or is not a directory")
    looked = "; ".join(f"{p} ({why})" for why, p in candidates)
    raise DataError(
        f"no data root found. Looked in: {looked}. Point fusebench at the bundle with "
        f"--data-dir DIR or FUSEBENCH_DATA=DIR (the folder that holds MANIFEST.json)."
    )


def cache_root() -> Path:
    """Feature and dataset cache: $FUSEBENCH_CACHE, else ~/.cache/fusebench."""
    root = Path(os.environ.get("FUSEBENCH_CACHE") or Path.home() / ".cache" / "fusebench").expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root
