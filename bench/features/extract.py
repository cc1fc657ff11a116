"""From built tables to device-resident feature tensors, through the encoders and the cache."""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fusebench.config.loader import DatasetConfig
from fusebench.core import progress
from fusebench.data.builders import SPLITS, TaskTables
from fusebench.features.cache import FeatureCache, cache_key
from fusebench.features.encoders import Features, build_encoder
from fusebench.features.identity import encoder_identity
from fusebench.features.partial import EncodeCheckpoint, concat, every_s
from fusebench.features.partial_owner import SUFFIX, sweep

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SplitData:
    """One split of a task as tensors: per view pooled `[N, D]` and tokens `[N, T, D]`, labels `[N]`."""

    pooled: dict[str, Tensor]
    tokens: dict[str, Tensor]
    labels: Tensor
    clusters: tuple[str, ...] = ()  # per row, the cluster id (bench.data.builders); empty: unknown

    def __len__(self) -> int:
        return self.labels.shape[0]

    def inputs(self, kind: str, views: list[str]) -> dict[str, Tensor]:
        source = self.pooled if kind == "pooled" else self.tokens
        return {v: source[v] for v in sorted(views)}

    def to(self, device: torch.device) -> SplitData:
        return SplitData(
            {k: v.to(device) for k, v in self.pooled.items()},
            {k: v.to(device) for k, v in self.tokens.items()},
            self.labels.to(device),
            self.clusters,
        )


@dataclass(frozen=True)
class TaskData:
    """Everything a cell needs: the splits, the config, and provenance for the record."""

    config: DatasetConfig
    splits: dict[str, SplitData]
    fingerprint: str
    encoders: dict[str, str]  # view → encoder id
    encode_seconds: dict[str, float] = field(default_factory=dict)  # view → seconds spent (0 when cached)
    sources: dict[str, str] = field(default_factory=dict)
    # view → {"encoder", "items", "seconds", "items_per_s"} of the encoding done by this process (unique
    # items, one batched inference_mode pass per split); None for a view read whole from the cache
    encode_items_per_s: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    # view → seconds of the chunks resumed from interrupted encodes' checkpoints: spent by processes
    # that were killed before recording them, so the run's encoding phase adds them (bench/run/runner.py)
    resumed_encode_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def views(self) -> list[str]:
        """The views encoded for this run (a subset of the task's when the cells need fewer)."""
        return sorted(self.encoders)


def _dedupe(values: list[Any]) -> tuple[list[Any], Tensor]:
    """Unique values (bytes/str by content) and the index of each original value into them."""
    if not values or not isinstance(values[0], (bytes, str)):
        return values, torch.arange(len(values))
    seen: dict[bytes, int] = {}
    uniq: list[Any] = []
    index = []
    for v in values:
        h = hashlib.blake2b(v.encode() if isinstance(v, str) else v, digest_size=16).digest()
        if h not in seen:
            seen[h] = len(uniq)
            uniq.append(v)
        index.append(seen[h])
    return uniq, torch.tensor(index)


ENCODE_CHUNK = 256  # items per encoder call: the progress view advances this often


@dataclass(frozen=True)
class Encoded:
    """A split's features, with the items encoded and the seconds it took, interrupted runs' saved
    chunks included (`resumed` of the items came from their checkpoints, encoded in `resumed_seconds`
    by the processes that saved them: wall time a killed run never got to record as its phase)."""

    features: Features
    items: int
    seconds: float
    resumed: int = 0
    resumed_seconds: float = 0.0


def _encode_with_progress(encoder: Any, values: list[Any], key: str, label: str,
                          checkpoint: EncodeCheckpoint | None = None) -> Encoded:
    """encoder.encode over chunks of the split, reporting items/s and ETA as it goes. Encoders are
    row-wise and token widths fixed, but a text encoder pads each batch to its longest item, so a
    different chunking can move features in the last bits (MiniLM: ~1e-7 pooled). With a checkpoint,
    the chunks done are saved as it goes and a resumed encode starts after the saved ones, on the
    same chunk boundaries, so its features equal an uninterrupted encode's bitwise."""
    checkpoint = checkpoint or EncodeCheckpoint(None)
    checkpoint.claim()
    try:
        return _resume_encode(encoder, values, key, label, checkpoint)
    finally:
        checkpoint.release()


def _resume_encode(encoder: Any, values: list[Any], key: str, label: str, checkpoint: EncodeCheckpoint) -> Encoded:
    """`_encode_with_progress` while this process holds the checkpoint folder's lock."""
    parts, earlier_s = checkpoint.load()
    done = sum(len(p.pooled) for p in parts)
    if done:
        log.info("%s: resuming after %d of %d items encoded by an earlier run", label, done, len(values))
    progress.start(key, label, len(values), "items")
    t0 = time.perf_counter()
    try:
        progress.advance(key, done)
        pending: list[Features] = []
        pending_start, last = done, time.monotonic()
        for i in range(done, len(values), ENCODE_CHUNK):
            chunk = values[i:i + ENCODE_CHUNK]
            feats = encoder.encode(chunk)
            parts.append(feats)
            pending.append(feats)
            progress.advance(key, len(chunk))
            more = i + ENCODE_CHUNK < len(values)
            if more and time.monotonic() - last >= checkpoint.every_s:
                now = time.monotonic()
                checkpoint.save(pending_start, concat(pending), now - last)
                pending, pending_start, last = [], i + len(chunk), now
    finally:
        progress.finish(key)
    return Encoded(concat(parts), len(values), earlier_s + time.perf_counter() - t0, done, earlier_s)


def _expand(feat: Features, index: Tensor) -> Features:
    return Features(feat.pooled[index], None if feat.tokens is None else feat.tokens[index])


def _as_tokens(feat: Features) -> Tensor:
    """Token tensor of a view; a view without tokens becomes a one-token sequence of its pooled vector."""
    if feat.tokens is not None:
        return feat.tokens.float()
    return feat.pooled.unsqueeze(1)


def _standardise(per_split: dict[str, dict[str, Features]]) -> None:
    """z-score every view with train statistics (pooled per dimension; tokens over real rows only,
    padding rows stay exactly zero). Cached features stay raw; this runs on load."""
    for view, train in per_split["train"].items():
        mean, std = train.pooled.mean(0), train.pooled.std(0).clamp_min(1e-6)
        tok_stats = None
        if train.tokens is not None:
            real = train.tokens.float()[train.tokens.float().abs().amax(-1) > 0]
            tok_stats = (real.mean(0), real.std(0).clamp_min(1e-6)) if len(real) > 1 else None
        for split in SPLITS:
            f = per_split[split][view]
            tokens = f.tokens
            if tokens is not None and tok_stats is not None:
                t = tokens.float()
                mask = (t.abs().amax(-1, keepdim=True) > 0).to(t.dtype)
                z = (t - tok_stats[0]) / tok_stats[1]
                z = torch.where(z == 0, torch.full_like(z, 1e-6), z)  # a real row must never read as padding
                tokens = (z * mask).to(torch.float16)
            per_split[split][view] = Features((f.pooled - mean) / std, tokens)


def encode_task(
    cfg: DatasetConfig, tables: TaskTables, cache: FeatureCache, device: torch.device,
    views: set[str] | None = None,
) -> TaskData:
    """Encode the views a run needs (`views`; default every view of the task) of every split,
    reading from and filling the cache. Views no cell uses are never encoded. When the builder
    dropped classes (`data.min_groups_per_class`), the returned config has their reduced count."""
    if tables.classes is not None:
        cfg = dataclasses.replace(cfg, num_classes=tables.num_classes(cfg.num_classes))
    per_split: dict[str, dict[str, Features]] = {s: {} for s in SPLITS}
    encoder_ids: dict[str, str] = {}
    seconds: dict[str, float] = {}
    rates: dict[str, dict[str, Any] | None] = {}
    resumed_s: dict[str, float] = {}
    # Every view's identity enters the fingerprint, whichever views this run encodes, so that the
    # fingerprint names the task's data and encoders, not the subset a command needed.
    identities = {v: encoder_identity(view.encoder, view.options, f"datasets_cfg/{cfg.name}.yaml: views.{v}.options")
                  for v, view in sorted(cfg.views.items())}
    wanted = sorted(cfg.views) if views is None else sorted(views)
    unknown = [v for v in wanted if v not in cfg.views]
    if unknown:
        from fusebench.core.errors import UsageError

        raise UsageError(f"{cfg.name} has no view(s) {unknown}; its views: {sorted(cfg.views)}")
    for view_name in wanted:
        view = cfg.views[view_name]
        encoder = None
        keys, previous = {}, {}
        ident = identities[view_name]
        for split in SPLITS:
            parts = {"dataset": cfg.name, "revision": tables.fingerprint, "split": split, "view": view_name,
                     "column": view.column, "encoder": ident}
            keys[split] = cache_key(parts)
            previous[split] = cache.explain(cfg.name, f"{split}/{view_name}", keys[split], parts)
        cached = {s: cache.get(cfg.name, k) for s, k in keys.items()}
        for split, key in keys.items():  # before encoding: a changed key's old partial folder frees its space
            sweep(cache.path(cfg.name, key).parent, f"{split}/{view_name}", key, previous[split],
                  stored=cached[split] is not None)
        missing = [s for s, f in cached.items() if f is None]
        started = time.perf_counter()
        rates[view_name] = None
        if missing:
            items, busy = 0, 0.0
            encoder = build_encoder(view.encoder, view.options, device)
            if encoder.fitted:
                train_values = list(tables.splits["train"][view.column])
                if "labels" in inspect.signature(encoder.fit).parameters:  # label-aware (tfidf nb_weight/lr_score)
                    encoder.fit(train_values, labels=list(tables.splits["train"]["label"]))
                else:  # a plugin encoder written against fit(values)
                    encoder.fit(train_values)
            for split in missing:
                values, index = _dedupe(list(tables.splits[split][view.column]))
                checkpoint = EncodeCheckpoint(cache.path(cfg.name, keys[split]).with_suffix(SUFFIX), every_s(),
                                              f"{split}/{view_name}")
                enc = _encode_with_progress(encoder, values, f"encode:{cfg.name}/{split}/{view_name}",
                                            f"encode {cfg.name}/{split}/{view_name} ({view.encoder})", checkpoint)
                rate = enc.items / max(enc.seconds, 1e-9)
                items, busy = items + enc.items, busy + enc.seconds
                if enc.resumed_seconds:
                    resumed_s[view_name] = resumed_s.get(view_name, 0.0) + enc.resumed_seconds
                log.info("encoded %s/%s/%s: %d items with %s at %.1f items/s%s", cfg.name, split, view_name,
                         enc.items, view.encoder, rate,
                         f" ({enc.resumed} of them, and their seconds, from an interrupted run)" if enc.resumed else "")
                expanded = _expand(enc.features, index)
                cached[split] = expanded
                cache.put(cfg.name, keys[split], expanded, {"encoder": encoder.id, "items_per_s": rate})
                checkpoint.clear()
            rates[view_name] = {"encoder": view.encoder, "items": items, "seconds": round(busy, 3),
                                "items_per_s": round(items / max(busy, 1e-9), 1)}
        encoder_ids[view_name] = f"{view.encoder}:{json.dumps(view.options, sort_keys=True)}"
        seconds[view_name] = time.perf_counter() - started
        for split in SPLITS:
            per_split[split][view_name] = cached[split]  # type: ignore[assignment]

    _standardise(per_split)
    splits = {}
    for split in SPLITS:
        labels = torch.as_tensor(np.asarray(list(tables.splits[split]["label"])), dtype=torch.long)
        feats = per_split[split]
        for v, f in feats.items():
            if len(f) != len(labels):
                raise RuntimeError(f"{cfg.name}/{split}/{v}: {len(f)} feature rows for {len(labels)} labels (stale cache?)")
        splits[split] = SplitData(
            {v: f.pooled.float() for v, f in feats.items()},
            {v: _as_tokens(f) for v, f in feats.items()},
            labels,
            tuple(str(c) for c in tables.splits[split]["cluster"]) if "cluster" in tables.splits[split].column_names else (),
        )
    bad = int(((splits["train"].labels < 0) | (splits["train"].labels >= cfg.num_classes)).sum())
    if bad:
        raise RuntimeError(f"{cfg.name}: {bad} train labels outside [0, {cfg.num_classes}); fix num_classes in its YAML")
    fingerprint = cache_key({"tables": tables.fingerprint, "encoders": identities})[:16]
    return TaskData(cfg, splits, fingerprint, encoder_ids, seconds, tables.sources, rates, resumed_s)
