"""Evaluated seeds of a cell that has not finished, kept on disk so that a killed run keeps them.

The runner writes a cell's records to results.jsonl only once all of its R × K evaluation fits are
done. Until then they lived in one process's memory, so a kill lost every fit of the cell. On a
2-core CPU one fit of a token-level model on AV-MNIST takes ~35 min, and a cell's 15 fits take ~9 h.
A session's background time is shorter than that, so such a cell could never finish: each restart
retrained every seed (issue 14 §3).

`SeedStore` writes each finished seed's record and test predictions at once, under
RUN_DIR/partial/DATASET/. A resumed cell reuses the entries whose key still matches and retrains
only the others (bench/run/cell.py: with the generator state stored with the seed before, so that
their numbers are an uninterrupted run's bit for bit; tests/test_seed_store_resume.py). The key is
the data fingerprint, strategy, replicate, seed, the searched params
and the training config. The runner removes a cell's entries once its records are in results.jsonl
(`clear`), and a resumed run those of cells already done (a kill between the two). A stale,
unreadable or half-written entry is never reused: that seed is retrained, and the log says why.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from fusebench.core.io import atomic_write_bytes
from fusebench.results.records import Record
from fusebench.results.resample import strategy_stem

log = logging.getLogger(__name__)

FORMAT = 1


def seed_key(parts: dict[str, Any]) -> str:
    """sha256 of what a seed's fit depends on beyond the seed itself (JSON, sorted keys)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _write(path: Path, data: bytes, tries: int = 3) -> None:
    """atomic_write_bytes, again when the folder vanished between its mkdir and its temporary file:
    with --jobs 2 the parent's `clear` of another cell removes the dataset's folder when it looks
    empty, which it does while this worker is about to store its cell's first seed."""
    for attempt in range(tries):
        try:
            atomic_write_bytes(path, data)
            return
        except FileNotFoundError:
            if attempt == tries - 1:
                raise


@dataclass(frozen=True)
class StoredSeed:
    """One evaluated seed as stored: its record, its test predictions, and torch's generator states
    after it was scored (None when stored without them)."""

    record: Record
    predictions: pd.DataFrame
    rng: dict[str, str] | None


class SeedStore:
    """The finished evaluation seeds of one cell (dataset, strategy) of a run directory."""

    def __init__(self, run_dir: Path, dataset: str, strategy: str) -> None:
        self.folder = Path(run_dir) / "partial" / dataset
        self.stem = strategy_stem(strategy)

    def _paths(self, replicate: int, seed: int) -> tuple[Path, Path]:
        base = f"{self.stem}.r{replicate}.s{seed}"  # not Path.with_suffix: that would replace ".s{seed}"
        return self.folder / f"{base}.json", self.folder / f"{base}.parquet"

    def save(self, replicate: int, seed: int, key: str, record: Record, predictions: pd.DataFrame,
             rng: dict[str, str] | None = None) -> None:
        """Keep one evaluated seed. The predictions go first, then the entry that names them: an
        entry on disk means both are whole (each file is written atomically, bench/core/io.py).
        `rng`: torch's generator states once the seed was scored (`rng_state`), where the next seed's
        fit starts when seeds train one after another."""
        entry, frame = self._paths(replicate, seed)
        buf = io.BytesIO()
        predictions.to_parquet(buf)
        _write(frame, buf.getvalue())
        # no default=str: a value that results.jsonl cannot hold (write_records) must not come back as a string
        _write(entry, json.dumps({"format": FORMAT, "key": key, "record": record.to_json(), "rng": rng}).encode())

    def load(self, replicate: int, seed: int, key: str, device: str | None = None,
             code: str | None = None) -> StoredSeed | None:
        """The seed as an earlier process of this run stored it under the same key; else None (nothing
        stored, or stored for other inputs, or unreadable). With `device` (the record's `device` this
        process would write, `cuda:<GPU name>` / `cpu:<processor>`), a seed scored on another device is
        None too: a run resumed on another machine retrains the cell's seeds there, so that no cell
        mixes devices and its throughput is measured where its seeds ran. (The device is checked on
        the stored record rather than put in the key, so that seeds stored before the check still match.)
        With `code` (bench/core/code_id.py), a seed whose record names other strategy code is None: a cell
        is never scored partly by the code before a change and partly by the code after it."""
        entry, frame = self._paths(replicate, seed)
        if not entry.is_file():
            return None
        try:
            blob = json.loads(entry.read_text())
            if blob.get("format") != FORMAT:
                log.info("%s: stored in format %s, this version reads %d; retraining it", entry, blob.get("format"), FORMAT)
                return None
            if blob.get("key") != key:
                log.info("%s: stored for other inputs (params, data or training config changed); retraining it", entry)
                return None
            record = Record.from_json(blob["record"])
            if device is not None and record.device != device:
                log.info("%s: scored on %s, this process runs on %s; retraining it here", entry,
                         record.device or "an unrecorded device", device)
                return None
            if code and record.code_id and record.code_id != code:
                log.info("%s: scored by other strategy code (code id %s, now %s); retraining it", entry,
                         record.code_id, code)
                return None
            return StoredSeed(record, pd.read_parquet(frame), blob.get("rng"))
        except (OSError, ValueError, KeyError, TypeError) as exc:  # pyarrow's errors are OSError/ValueError
            log.warning("%s: unreadable (%s: %s); retraining this seed", entry, type(exc).__name__, exc)
            return None

    def _entries(self, suffix: str = "*") -> list[Path]:
        return list(self.folder.glob(f"{self.stem}.r*.s*.{suffix}")) if self.folder.is_dir() else []

    def count(self) -> int:
        """How many seeds of the cell are stored (every replicate)."""
        return len(self._entries("json"))

    def clear(self) -> None:
        """Remove the cell's entries (its records are in results.jsonl now)."""
        if not self.folder.is_dir():
            return
        for path in self._entries():
            path.unlink(missing_ok=True)
        try:
            self.folder.rmdir()  # only when no other cell has entries
            self.folder.parent.rmdir()
        except OSError:
            pass


def rng_state(device: torch.device) -> dict[str, str]:
    """torch's global generator states (CPU, and the device's on CUDA), as JSON-able text."""
    states = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return {k: base64.b64encode(v.numpy().tobytes()).decode() for k, v in states.items()}


def set_rng_state(states: dict[str, str], device: torch.device) -> None:
    """Put back what `rng_state` saved (a state for another kind of device is left alone)."""
    def tensor(text: str) -> torch.Tensor:
        return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)

    torch.set_rng_state(tensor(states["cpu"]))
    if device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(tensor(states["cuda"]), device)
