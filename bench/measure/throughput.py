"""Throughput without search: `fusebench throughput`.

Two measurements, both on synthetic inputs shaped like a task (or a given spec):
- inference samples/s and latency per strategy and batch size (bench.timing protocol), with peak
  memory, parameter count and FLOPs per sample;
- the harness overhead ratio: samples/s of `bench.train.train_model`'s training loop divided by
  a bare hand-written PyTorch loop (AdamW, same model init, same batches in the same order, same
  device). Validation is excluded from both (train_model times only its epochs' training loops and
  reports its validation passes apart, in `val_seconds`). Runs are interleaved and repeated; the
  median of each side is taken and the ratio of medians reported.

Input shapes: `DEFAULT_SHAPES` (text 384-d × 32 tokens, image 1280-d × 9 tokens — EfficientNet-Lite0's
3×3 grid —, audio 128-d × 16 tokens, 10 classes), `parse_dims("text=384x32,...")`, or
`shapes_from_dataset(name, size)`: the feature sizes of a dataset's encoded (cached) features.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from fusebench.core.errors import UsageError
from fusebench.measure.timing import TimingConfig, device_name, flops_per_sample, measure, synchronize
from fusebench.results.records import Throughput
from fusebench.strategies import STRATEGIES, FusionSpec
from fusebench.training.dropout import DropoutClock, restore_dropout, swap_dropout
from fusebench.training.loop import Batch, TrainConfig, train_model


@dataclass(frozen=True)
class InputShapes:
    """Per-modality input sizes: pooled vectors `[B, D]` and token sequences `[B, T, D']` (a view's token
    width can differ from its pooled width, e.g. log-mel pools to mean+std)."""

    pooled: FusionSpec
    tokens: FusionSpec
    source: str = "synthetic"

    def spec(self, input_kind: str) -> FusionSpec:
        return self.pooled if input_kind == "pooled" else self.tokens

    def describe(self) -> str:
        t = self.tokens
        return ", ".join(f"{m} {self.pooled.dims[m]}-d pooled / {t.dims[m]}-d×{t.tokens[m]} tokens" for m in t.modalities)


def _same(dims: dict[str, int], tokens: dict[str, int], num_classes: int, source: str) -> InputShapes:
    spec = FusionSpec(dims, tokens, num_classes)
    return InputShapes(spec, spec, source)


DEFAULT_SHAPES = _same({"audio": 128, "image": 1280, "text": 384}, {"audio": 16, "image": 9, "text": 32}, 10, "synthetic default")
DEFAULT_SPEC = DEFAULT_SHAPES.tokens


def parse_dims(text: str, num_classes: int = 10) -> InputShapes:
    """`"text=384x32,image=1280x9"` (modality=D×T; `x1` or no `xT` means a single token)."""
    dims, tokens = {}, {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, _, size = part.partition("=")
        d, _, t = size.lower().partition("x")
        try:
            dims[name.strip()], tokens[name.strip()] = int(d), int(t or 1)
        except ValueError:
            raise UsageError(f"--dims: {part!r} is not NAME=DxT (e.g. text=384x32)") from None
        if dims[name.strip()] < 1 or tokens[name.strip()] < 1:
            raise UsageError(f"--dims: {part!r} needs positive sizes")
    if not dims:
        raise UsageError("--dims is empty; e.g. text=384x32,image=1280x9")
    return _same(dims, tokens, num_classes, f"--dims {text}")


def shapes_from_dataset(name: str, size: str = "smoke", data_dir: str | None = None,
                        device: torch.device | None = None) -> InputShapes:
    """Feature sizes of a dataset's views, from its encoded features (the feature cache; encodes what
    is missing, as `fusebench run` would)."""
    from fusebench.config import catalog
    from fusebench.core.paths import cache_root, resolve_data_root
    from fusebench.data.builders import build_tables
    from fusebench.features.cache import FeatureCache
    from fusebench.features.extract import encode_task

    cfg = catalog.get_dataset(name)
    tables = build_tables(cfg, resolve_data_root(data_dir), size)
    data = encode_task(cfg, tables, FeatureCache(cache_root()), device or torch.device("cpu"))
    train = data.splits["train"]
    tokens = {v: train.tokens[v].shape[1] for v in data.views}
    n_classes = data.config.num_classes  # after any class the builder dropped (data.min_groups_per_class)
    pooled = FusionSpec({v: train.pooled[v].shape[-1] for v in data.views}, tokens, n_classes)
    toks = FusionSpec({v: train.tokens[v].shape[-1] for v in data.views}, tokens, n_classes)
    return InputShapes(pooled, toks, f"dataset {name} ({size})")


def synthetic_batch(spec: FusionSpec, kind: str, n: int, device: torch.device, seed: int = 0) -> Batch:
    """Standard-normal features (cached features are z-scored too) and uniform labels, on `device`."""
    g = torch.Generator().manual_seed(seed)
    if kind == "pooled":
        inputs = {m: torch.randn(n, d, generator=g) for m, d in spec.dims.items()}
    else:
        inputs = {m: torch.randn(n, spec.tokens[m], d, generator=g) for m, d in spec.dims.items()}
    labels = torch.randint(0, spec.num_classes, (n,), generator=g)
    return Batch({k: v.to(device) for k, v in inputs.items()}, labels.to(device))


def expand_names(names: list[str], modalities: list[str]) -> list[tuple[str, str, list[str]]]:
    """Registry names → (row name, registry name, modalities) like the run's cells: a per-modality
    strategy becomes one row per modality (`unimodal:text`); `unimodal:text` is accepted as given."""
    out: list[tuple[str, str, list[str]]] = []
    for name in names:
        base, _, view = name.partition(":")
        info = STRATEGIES.get(base)
        if view:
            if view not in modalities:
                raise UsageError(f"{name}: modality {view!r} not among {modalities}")
            out.append((name, base, [view]))
        elif info.per_modality:
            out += [(f"{base}:{m}", base, [m]) for m in modalities]
        elif len(modalities) >= info.min_modalities:
            out.append((base, base, list(modalities)))
    return out


@dataclass(frozen=True)
class InferenceRow:
    strategy: str
    family: str
    input_kind: str
    batch_size: int  # requested; throughput.batch_size is the one measured (after OOM back-off)
    throughput: Throughput | None
    params: int
    flops_per_sample: float | None
    error: str | None = None


def inference_table(names: list[str], batch_sizes: list[int], device: torch.device,
                    spec: FusionSpec | InputShapes = DEFAULT_SHAPES, repetitions: int = 30,
                    warmup: int = 5) -> list[InferenceRow]:
    """One row per strategy (per modality for unimodal ones) × batch size. A strategy that fails to
    build or run is a row with `error`, never the end of the sweep."""
    shapes = spec if isinstance(spec, InputShapes) else InputShapes(spec, spec)
    rows = []
    for row_name, base, views in expand_names(names, shapes.tokens.modalities):
        info = STRATEGIES.get(base)
        s = shapes.spec(info.input_kind).restrict(views)
        try:
            torch.manual_seed(0)
            model = info.build(s).to(device).eval()
            model.fit_prior(torch.arange(s.num_classes, device=device))
            data = synthetic_batch(s, info.input_kind, max(256, 4 * max(batch_sizes)), device)
            flops = flops_per_sample(model, data.inputs)
            n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        except Exception as exc:
            rows += [InferenceRow(row_name, info.family, info.input_kind, bs, None, 0, None, f"{type(exc).__name__}: {exc}")
                     for bs in batch_sizes]
            continue
        for bs in batch_sizes:
            try:
                tp = measure(model, data.inputs, device, TimingConfig(warmup, repetitions, bs), float("nan"))
                rows.append(InferenceRow(row_name, info.family, info.input_kind, bs, tp, n_params, flops, tp.error))
            except Exception as exc:
                rows.append(InferenceRow(row_name, info.family, info.input_kind, bs, None, n_params, flops,
                                         f"{type(exc).__name__}: {exc}"))
        del model, data
    return rows


def format_table(rows: list[InferenceRow]) -> str:
    head = (f"{'strategy':24s} {'family':9s} {'batch':>5s} {'samples/s':>11s} {'p50 ms':>8s} {'p95 ms':>8s} "
            f"{'peak MB':>8s} {'+MB':>6s} {'params':>9s} {'FLOPs/sample':>12s}")
    lines = [head]
    for r in rows:
        flops = f"{r.flops_per_sample:.3g}" if r.flops_per_sample is not None else "–"
        t = r.throughput
        if t is None:
            lines.append(f"{r.strategy:24s} {r.family:9s} {r.batch_size:5d} FAILED: {r.error}")
            continue
        bs = f"{t.batch_size}" + ("*" if t.oom_backoff else "")
        # latency: one batch of `bs` rows (p50/p95); at bs 1 that is the per-example latency
        p50, p95 = (t.batch_ms_p50, t.batch_ms_p95) if t.batch_ms_p50 is not None else (t.latency_ms_p50, t.latency_ms_p95)
        delta = f"{t.peak_mem_delta_mb:6.1f}" if t.peak_mem_delta_mb is not None else f"{'–':>6s}"
        lines.append(f"{r.strategy:24s} {r.family:9s} {bs:>5s} {t.infer_samples_per_s:11.0f} {p50:8.3f} {p95:8.3f} "
                     f"{t.peak_mem_mb:8.0f} {delta} {r.params:9d} {flops:>12s}")
    lines.append("peak MB: the measured region's peak (CUDA: max allocated; CPU: the process's peak RSS); "
                 "+MB: its growth over the memory in use when the region began")
    if any(r.throughput and r.throughput.oom_backoff for r in rows):
        lines.append("* batch size reduced after running out of memory (see oom_backoff in the JSON)")
    return "\n".join(lines)


def _bare_loop(model: torch.nn.Module, train: Batch, cfg: TrainConfig, seed: int) -> float:
    """The hand-written reference: what a careful user writes without a harness. Returns samples/s.

    Its dropout is the harness's keyed dropout (training/dropout.py), so that the ratio measures the
    harness's bookkeeping, not the price of reproducible masks (README, "Batched seeds")."""
    clock = DropoutClock()
    swapped = swap_dropout(model, seed, clock)
    try:
        return _bare_steps(model, train, cfg, seed, clock)
    finally:
        restore_dropout(swapped)


def _bare_steps(model: torch.nn.Module, train: Batch, cfg: TrainConfig, seed: int, clock: DropoutClock) -> float:
    device = train.labels.device
    step = 0
    opt = torch.optim.AdamW(model.parameters(), lr=model.params.lr, weight_decay=model.params.weight_decay)
    gen = torch.Generator(device=device).manual_seed(seed)
    n = train.labels.shape[0]
    names = sorted(train.inputs)
    tensors = [train.inputs[k] for k in names]
    model.train()
    samples = 0
    synchronize(device)
    t0 = time.perf_counter()
    for _ in range(cfg.epochs):
        order = torch.randperm(n, device=device, generator=gen)
        for start in range(0, n, cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            clock.tick(step)
            step += 1
            loss = F.cross_entropy(model({k: t[idx] for k, t in zip(names, tensors)}), train.labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            samples += idx.numel()
    synchronize(device)
    return samples / (time.perf_counter() - t0)


@dataclass(frozen=True)
class OverheadResult:
    strategy: str
    harness_samples_per_s: float  # median over repeats
    bare_samples_per_s: float  # median over repeats
    ratio: float  # harness / bare
    repeats: int
    harness_runs: tuple[float, ...] = ()
    bare_runs: tuple[float, ...] = ()
    val_seconds: float = 0.0  # the harness's validation passes (median), not in its samples/s


def overhead_ratio(name: str, device: torch.device, spec: FusionSpec | InputShapes = DEFAULT_SHAPES, n: int = 2048,
                   epochs: int = 3, batch_size: int = 128, repeats: int = 3) -> OverheadResult:
    """Harness training samples/s over a bare AdamW loop's, same model init, batches and order.

    Each repeat runs the harness then the bare loop back to back (interleaved, so that load on a
    shared machine hits both alike); the medians of the two series are compared. The harness's
    strategy-specific loss (`training_loss`, e.g. stacking) is what it trains with; such strategies
    do more work than plain cross-entropy, so compare those ratios with care."""
    shapes = spec if isinstance(spec, InputShapes) else InputShapes(spec, spec)
    expanded = expand_names([name], shapes.tokens.modalities)
    if not expanded:
        raise UsageError(f"{name} needs more modalities than {shapes.tokens.modalities}")
    row_name, base, views = expanded[0]  # a per-modality strategy: its first modality
    info = STRATEGIES.get(base)
    if not info.trainable:
        raise UsageError(f"{name} has nothing to train")
    s = shapes.spec(info.input_kind).restrict(views)
    data = synthetic_batch(s, info.input_kind, n, device)
    val = synthetic_batch(s, info.input_kind, 64, device, seed=1)
    cfg = TrainConfig(epochs=epochs, patience=epochs + 1, batch_size=batch_size)
    harness, bare, val_s = [], [], []
    for r in range(repeats):
        torch.manual_seed(r)
        m = info.build(s).to(device)
        res = train_model(m, data, val, cfg, "accuracy", seed=r)
        harness.append(res.train_samples_per_s)
        val_s.append(res.val_seconds)
        torch.manual_seed(r)
        bare.append(_bare_loop(info.build(s).to(device), data, cfg, seed=r))
    h, b = statistics.median(harness), statistics.median(bare)
    return OverheadResult(row_name, h, b, h / b, repeats, tuple(harness), tuple(bare), statistics.median(val_s))


def envelope(device: torch.device) -> dict[str, Any]:
    from fusebench import SCHEMA_VERSION
    from fusebench.results.provenance import git_sha, machine, now, source_revision, versions

    return {"schema_version": SCHEMA_VERSION, "measured_at": now(), "device": device_name(device),
            "torch_version": torch.__version__, "cuda_version": torch.version.cuda,
            "torch_threads": torch.get_num_threads(), "versions": versions(), "machine": machine(device),
            "git_sha": git_sha(), "source_revision": source_revision()}


def as_json(rows: list[InferenceRow], overhead: list[OverheadResult], device: torch.device,
            shapes: InputShapes | None = None, protocol: dict[str, Any] | None = None) -> dict[str, Any]:
    out = {**envelope(device), "protocol": protocol or {}, "inputs": None,
           "inference": [asdict(r) for r in rows], "overhead": [asdict(o) for o in overhead]}
    if shapes is not None:
        out["inputs"] = {"source": shapes.source, "pooled": dataclasses.asdict(shapes.pooled),
                         "tokens": dataclasses.asdict(shapes.tokens)}
    return out


CSV_FIELDS = ("strategy", "family", "input_kind", "requested_batch_size", "batch_size", "infer_samples_per_s",
              "batch_ms_p50", "batch_ms_p95", "infer_samples_per_s_bs1", "latency_ms_p50", "latency_ms_p95",
              "peak_mem_mb", "peak_mem_kind", "params", "flops_per_sample", "oom_backoff", "device",
              "torch_version", "cuda_version", "error")


def as_csv(rows: list[InferenceRow]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, CSV_FIELDS)
    w.writeheader()
    for r in rows:
        t = asdict(r.throughput) if r.throughput else {}
        w.writerow({**{k: t.get(k) for k in CSV_FIELDS}, "strategy": r.strategy, "family": r.family,
                    "input_kind": r.input_kind, "requested_batch_size": r.batch_size, "params": r.params,
                    "flops_per_sample": r.flops_per_sample, "error": r.error,
                    "oom_backoff": " ".join(map(str, t.get("oom_backoff") or []))})
    return buf.getvalue()


def write_output(path: Path, rows: list[InferenceRow], overhead: list[OverheadResult], device: torch.device,
                 shapes: InputShapes | None = None, protocol: dict[str, Any] | None = None,
                 extra: dict[str, Any] | None = None) -> None:
    """`.csv`: the inference rows; anything else: JSON with the device/versions envelope, plus `extra`
    (the seed/trial batching rows of `fusebench throughput --seed-batching/--trial-batching`)."""
    from fusebench.core.io import atomic_write_bytes

    if path.suffix.lower() == ".csv":
        atomic_write_bytes(path, as_csv(rows).encode())
    else:
        doc = {**as_json(rows, overhead, device, shapes, protocol), **(extra or {})}
        atomic_write_bytes(path, json.dumps(doc, indent=2, default=str).encode())
