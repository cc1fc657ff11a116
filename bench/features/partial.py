"""Encoding checkpoints: a long split's encode resumes where a killed or interrupted run stopped.

Encoding the full IMDB or Flickr8k caption splits takes most of an hour on a CPU; losing that to a
kill, a reboot or the end of a working session would make "features are cached once" untrue. While
a split is encoded, the chunks done so far are written every `every_s` seconds next to the split's
cache entry, as `<key>.partial/<start>.pt` (atomic, with a checksum). The key names the data, the
code and the encoder, so a later run with the same key loads them, encodes only the rest with the
same chunk boundaries (the features equal an uninterrupted encode's), and removes them once the
entry is stored. Parts of several writers of one key (different checkpoint intervals) may overlap:
covered rows are skipped, the rest used; unreadable parts are skipped, and after the first gap in
the covered range the rest is dropped, their items encoded again.
While it encodes, a process holds the folder's shared lock; folders no encode will resume (the
slot's key changed, or a kill landed between storing the entry and removing them) are removed by
the next encode of the same slot when no live process holds them (bench/features/partial_owner.py).
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fusebench.core.io import atomic_write_bytes
from fusebench.features.cache import checksum
from fusebench.features.encoders import Features
from fusebench.features.partial_owner import claim, remove_if_unused

log = logging.getLogger(__name__)
ENV_EVERY_S = "FUSEBENCH_ENCODE_CHECKPOINT_S"
DEFAULT_EVERY_S = 60.0


def every_s() -> float:
    """Seconds of encoding between checkpoints (`$FUSEBENCH_ENCODE_CHECKPOINT_S`, default 60; 0 = every chunk)."""
    raw = os.environ.get(ENV_EVERY_S, "")
    try:
        return max(float(raw), 0.0) if raw else DEFAULT_EVERY_S
    except ValueError:
        log.warning("%s=%r is not a number of seconds; using %s", ENV_EVERY_S, raw, DEFAULT_EVERY_S)
        return DEFAULT_EVERY_S


@dataclass
class EncodeCheckpoint:
    """The partial encode of one cache entry; `folder` None turns checkpointing off. The first failed
    write (a read-only or full cache) turns it off too, with one warning. `slot` (split/view) is
    recorded in the folder, so that a later key of the same slot knows the folder is abandoned."""

    folder: Path | None
    every_s: float = DEFAULT_EVERY_S
    slot: str = ""
    _lock: int | None = field(default=None, repr=False)

    def claim(self) -> None:
        """Hold the folder's shared lock while encoding (bench/features/partial_owner.py)."""
        if self.folder is None or self._lock is not None:
            return
        try:
            self._lock = claim(self.folder, self.slot)
        except OSError as exc:
            self._off(exc, 0)

    def release(self) -> None:
        """Let go of the lock; a folder left without saved parts is removed unless another writer holds it."""
        if self._lock is None:
            return
        fd, self._lock = self._lock, None
        if self.folder is None or any(self.folder.glob("*.pt")):
            os.close(fd)
        else:
            remove_if_unused(self.folder, fd)

    def _off(self, exc: OSError, start: int) -> None:
        log.warning("encode checkpoints not written to %s (%s); an interrupted encode restarts from item %d",
                    self.folder, exc.strerror or exc, start)
        self.folder = None

    def load(self) -> tuple[list[Features], float]:
        """The parts saved so far, contiguous from item 0, in order, and the encoding seconds they took
        (so rates and phase times count the interrupted runs' work). Two writers of one key with
        different checkpoint intervals leave overlapping parts: a part whose items are already
        covered is skipped, one that overlaps the covered range contributes its remaining rows (and
        their share of its seconds); parts start on chunk boundaries, so the rows are those of an
        uninterrupted encode. A bad part is skipped; at the first gap the rest is dropped."""
        if self.folder is None or not self.folder.is_dir():
            return [], 0.0
        parts: list[Features] = []
        at, seconds = 0, 0.0
        for path in sorted(self.folder.glob("*.pt")):
            try:
                start = int(path.stem)
                blob = torch.load(path, map_location="cpu", weights_only=True)
                feats = Features(blob["pooled"], blob.get("tokens"))
                took = float(blob.get("seconds", 0.0))
                good = blob.get("sha256") == checksum(feats)
            except Exception as exc:  # unreadable, truncated, a foreign file: encode its items again
                log.warning("encode checkpoint %s is unreadable (%s): its items are encoded again", path,
                            type(exc).__name__)
                continue
            if not good:
                log.warning("encode checkpoint %s does not match its checksum: its items are encoded again", path)
                continue
            if start > at:  # a gap: what follows cannot be used
                break
            n = len(feats.pooled)
            if start + n <= at:  # covered by an earlier part (another writer's)
                continue
            if start < at:
                skip = at - start
                feats = Features(feats.pooled[skip:], None if feats.tokens is None else feats.tokens[skip:])
                took *= (n - skip) / n
            parts.append(feats)
            at += len(feats.pooled)
            seconds += took
        return parts, seconds

    def save(self, start: int, feats: Features, seconds: float) -> None:
        """Store items `start .. start + len(feats)`, encoded in `seconds` (best effort: a full disk
        only costs the resume)."""
        if self.folder is None:
            return
        buf = io.BytesIO()
        torch.save({"pooled": feats.pooled, "tokens": feats.tokens, "sha256": checksum(feats), "seconds": seconds}, buf)
        try:
            atomic_write_bytes(self.folder / f"{start:010d}.pt", buf.getvalue())
        except OSError as exc:
            self._off(exc, start)

    def clear(self) -> None:
        """Remove the folder once the entry is stored, unless another live writer of the same key still
        holds it (that writer removes it when it stores the entry, or the next encode of the slot does)."""
        if self.folder is None:
            return
        fd, self._lock = self._lock, None
        remove_if_unused(self.folder, fd)


def concat(parts: list[Features]) -> Features:
    """One Features from consecutive parts (rows in order)."""
    if len(parts) == 1:
        return parts[0]
    tokens = None if parts[0].tokens is None else torch.cat([p.tokens for p in parts])
    return Features(torch.cat([p.pooled for p in parts]), tokens)
