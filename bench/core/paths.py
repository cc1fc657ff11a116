"""Where data and caches live. No path is hard-coded beyond the documented search order."""

from __future__ import annotations

import os
from pathlib import Path

from fusebench.core.errors import DataError, UsageError


def checkout_root() -> Path | None:
    """The source checkout this package runs from (the folder with fusebench's pyproject.toml), or
    None for an installed wheel, which has no checkout next to which data could sit."""
    for folder in Path(__file__).resolve().parents:
        project = folder / "pyproject.toml"
        if project.is_file() and 'name = "fusebench"' in project.read_text(errors="replace"):
            return folder
    return None


def data_root_candidates(explicit: str | os.PathLike | None = None) -> list[tuple[str, Path]]:
    """The data-root search order of DESIGN.md, each with the reason it is considered."""
    out: list[tuple[str, Path]] = []
    if explicit:
        out.append(("--data-dir", Path(explicit).expanduser()))
    if os.environ.get("FUSEBENCH_DATA"):
        out.append(("$FUSEBENCH_DATA", Path(os.environ["FUSEBENCH_DATA"]).expanduser()))
    checkout = checkout_root()
    if checkout is not None:
        out.append(("../shared/data next to the checkout", checkout.parent / "shared" / "data"))
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
    env = os.environ.get("FUSEBENCH_CACHE")
    root = Path(env or Path.home() / ".cache" / "fusebench").expanduser()
    origin = "$FUSEBENCH_CACHE" if env else "the default cache"
    if root.exists() and not root.is_dir():
        raise UsageError(f"{origin} {root} is a file, not a directory; point FUSEBENCH_CACHE at a folder")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{origin} {root} cannot be created ({exc.strerror or exc}); "
                         "point FUSEBENCH_CACHE at a writable folder") from None
    return root


def scratch_dir(name: str) -> Path:
    """`cache_root()/name` when it is writable, else a private temporary folder (a read-only cache
    still serves its entries; libraries that want lock files get a writable place)."""
    import tempfile

    path = cache_root() / name
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".probe-{os.getpid()}"
        probe.touch()
        probe.unlink()
        return path
    except OSError:
        return Path(tempfile.mkdtemp(prefix=f"fusebench-{name}-"))
