"""A run directory has one writer and one identity.

- `RunDirLock`: an exclusive `flock` on `RUN_DIR/.fusebench.lock`, held for the whole `run`. A
  second process on the same directory gets exit 2 naming the holder (pid, host, since when). The
  kernel drops the lock when its process dies, even by kill -9, so a crashed run never leaves a
  stale lock behind. Distributed workers (`fusebench worker`) share a *storage*, never a run
  directory, and take no lock.
- Identity: what made the directory — suite name, a hash of the settings that change results
  (`config_hash`) and, per dataset, the data fingerprint. It is written to run.json
  (`identity`), carried into every leaderboard.csv row, and checked on resume: resuming with a
  different identity is exit 2 naming the difference, unless `--new-run` asks for a fresh
  directory beside it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fusebench.core.encmode import FineTuneSettings
from fusebench.core.errors import UsageError

log = logging.getLogger(__name__)

LOCK_NAME = ".fusebench.lock"
LOCK_TRIES = 10
# Suite fields that do not change what a cell computes: parallelism and prose.
NOT_IDENTITY = frozenset({"jobs", "description"})
# settings added after runs existed: at this value they leave the hash as it was, so old runs still resume
# Suite keys added after runs existed: at these values they stay out of the hash, so older run
# directories keep their identity; any other value enters it.
NEUTRAL_DEFAULTS: dict[str, Any] = {"trial_batch": 1, "encoders": ("frozen",),
                                    "finetune": dataclasses.asdict(FineTuneSettings())}


class RunDirLock:
    """Exclusive, process-lifetime lock of a run directory (see the module docstring)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None

    def __enter__(self) -> RunDirLock:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise UsageError(f"--out {self.path.parent}: cannot create the run lock {self.path}: "
                             f"{exc.strerror or exc}; choose a writable --out") from None
        for attempt in range(LOCK_TRIES):  # `lock_holder` (fusebench stop) holds a shared lock for microseconds
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt + 1 < LOCK_TRIES:
                    time.sleep(0.05)
                    continue
                holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise UsageError(f"--out {self.path.parent} is in use by {holder}; wait for it to finish, or choose "
                                 "another --out (workers share a --storage, not a run directory)") from None
        os.ftruncate(fd, 0)
        since = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()} since {since}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


@contextmanager
def resume_hint(out: Path, given: Path) -> Iterator[None]:
    """A `--new-run` run that stops or is interrupted says which --out resumes it: "the same command"
    would start yet another OUT.N."""
    try:
        yield
    except KeyboardInterrupt:  # a --stop-after or `fusebench stop` stop, too
        if out != given:
            log.warning("this run is in %s: resume it with --out %s and without --new-run", out, out)
        raise


def lock_holder(run_dir: Path) -> str | None:
    """Who holds `run_dir`'s lock ("pid … on host … since …"), or None when no process runs it."""
    try:
        fd = os.open(Path(run_dir) / LOCK_NAME, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # granted only when no run holds its exclusive lock
        return None
    except BlockingIOError:
        return os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process"
    finally:
        os.close(fd)  # releases the shared lock, if taken


def config_hash(suite: Any) -> str:
    """sha256 (16 hex) of the suite settings that change results (all but `NOT_IDENTITY`)."""
    return config_hash_of(dataclasses.asdict(suite))


def identity(suite: Any) -> dict[str, Any]:
    return {"suite": suite.name, "config_hash": config_hash(suite), "data_fingerprints": {}}


def check_out_dir(out: Path) -> None:
    """`--out` must be a directory that can be made and written to (exit 2 otherwise, before any work)."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a directory; choose a directory path")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot create the run directory: {exc.strerror or exc}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out}: the run directory is not writable; choose another --out")


def _differences(old: dict[str, Any], new: dict[str, Any], old_config: dict[str, Any], new_config: dict[str, Any]) -> list[str]:
    diffs = []
    if old.get("suite") != new["suite"]:
        diffs.append(f"suite {old.get('suite')!r} → {new['suite']!r}")
    if old.get("config_hash") != new["config_hash"]:
        keys = sorted(k for k in set(old_config) | set(new_config)
                      if k not in NOT_IDENTITY
                      and not _same(old_config.get(k, NEUTRAL_DEFAULTS.get(k)), new_config.get(k, NEUTRAL_DEFAULTS.get(k))))
        detail = ", ".join(f"{k}: {old_config.get(k)!r} → {new_config.get(k)!r}" for k in keys) or "settings"
        diffs.append(f"config hash {old.get('config_hash')} → {new['config_hash']} ({detail})")
    return diffs


def check_resume(out: Path, meta: dict[str, Any], suite: Any) -> None:
    """Refuse (exit 2) to resume `out` when its run.json names another suite or other settings.

    A run.json from before identities existed is adopted: its `config.suite` is compared instead.
    """
    if not meta:
        return
    new = identity(suite)
    old_config = (meta.get("config") or {}).get("suite") or {}
    old = meta.get("identity") or {"suite": old_config.get("name"), "config_hash": config_hash_of(old_config)}
    new_config = json.loads(json.dumps(dataclasses.asdict(suite), default=str))
    diffs = _differences(old, new, old_config, new_config)
    if diffs:
        raise UsageError(f"--out {out} was made by another run ({'; '.join(diffs)}); resuming would mix them. "
                         "Use another --out, or add --new-run to start a fresh directory beside it")


def check_data(out: Path, meta: dict[str, Any], dataset: str, fingerprint: str) -> None:
    """Refuse (exit 2) to add records of `dataset` on data that differs from what the directory holds."""
    old = ((meta.get("identity") or {}).get("data_fingerprints") or {}).get(dataset)
    if old and old != fingerprint:
        raise UsageError(f"--out {out}: dataset {dataset!r} was run on data fingerprint {old}, the data (or encoder "
                         f"code/options) now give {fingerprint}; its old records would be mixed with new ones. "
                         "Use another --out, or add --new-run")


def config_hash_of(config: dict[str, Any]) -> str:
    fields = {k: v for k, v in config.items()
              if k not in NOT_IDENTITY and not (k in NEUTRAL_DEFAULTS and _same(v, NEUTRAL_DEFAULTS[k]))}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def new_run_dir(out: Path) -> Path:
    """The first free `OUT.N` beside `out` (or `out` itself when it holds no run yet)."""
    if not (out / "run.json").exists() and not (out / "results.jsonl").exists():
        return out
    n = 1
    while out.with_name(f"{out.name}.{n}").exists():
        n += 1
    return out.with_name(f"{out.name}.{n}")


def read_run_json(path: Path) -> dict[str, Any]:
    """The run envelope of a directory ({} when there is none); an unreadable one is exit 2 naming it."""
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: not a readable run envelope ({exc}); move it aside or choose another --out") from None
    if not isinstance(meta, dict):
        raise UsageError(f"{path}: not a run envelope (a JSON {type(meta).__name__}); choose another --out")
    return meta
