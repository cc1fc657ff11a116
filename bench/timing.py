"""Throughput measurement: warm-up, device synchronisation, many repetitions, median and p95.

On GPU each repetition is timed with CUDA events; on CPU with `perf_counter` (synchronous).
Inputs rotate through different slices of the evaluation split so caches do not flatter.
An out-of-memory batch size halves until it fits and the record says which size was used.
"""

from __future__ import annotations

import resource
import sys
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from bench.records import Throughput
from strategies.base import FusionModel


@dataclass(frozen=True)
class TimingConfig:
    warmup: int = 5
    repetitions: int = 30
    batch_size: int = 256


def _slices(inputs: Mapping[str, Tensor], batch_size: int, count: int) -> list[dict[str, Tensor]]:
    n = next(iter(inputs.values())).shape[0]
    starts = [(i * batch_size) % max(n - batch_size + 1, 1) for i in range(count)]
    out = []
    for s in starts:
        idx = torch.arange(s, s + batch_size) % n
        out.append({k: v[idx.to(v.device)] for k, v in inputs.items()})
    return out


@torch.inference_mode()
def _time_forward(model: FusionModel, batches: list[dict[str, Tensor]], warmup: int, device: torch.device) -> np.ndarray:
    for b in batches[:warmup]:
        model(b)
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for b in batches[warmup:]:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            model(b)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000.0)
    else:
        import time

        for b in batches[warmup:]:
            t0 = time.perf_counter()
            model(b)
            times.append(time.perf_counter() - t0)
    return np.asarray(times)


def peak_memory_mb(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (rss / 2**20 if sys.platform == "darwin" else rss / 1024), "cpu_peak_rss"


def flops_per_sample(model: FusionModel, inputs: Mapping[str, Tensor]) -> float | None:
    """FLOPs of one forward pass on a single example, from torch.utils.flop_counter."""
    one = {k: v[:1] for k, v in inputs.items()}
    try:
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            model(one)
        return float(counter.get_total_flops())
    except Exception:  # noqa: BLE001 - some ops have no FLOP formula; the record says None
        return None


def measure(
    model: FusionModel, inputs: Mapping[str, Tensor], device: torch.device, cfg: TimingConfig, train_samples_per_s: float
) -> Throughput:
    """Inference throughput at the evaluation batch size and at batch size 1, plus latency percentiles."""
    model.eval()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    n = next(iter(inputs.values())).shape[0]
    batch_size = min(cfg.batch_size, n)
    while True:
        try:
            big = _time_forward(model, _slices(inputs, batch_size, cfg.warmup + cfg.repetitions), cfg.warmup, device)
            break
        except torch.OutOfMemoryError:
            if batch_size == 1:
                raise
            torch.cuda.empty_cache()
            batch_size //= 2
    one = _time_forward(model, _slices(inputs, 1, cfg.warmup + cfg.repetitions), cfg.warmup, device)
    mem, kind = peak_memory_mb(device)
    return Throughput(
        train_samples_per_s=float(train_samples_per_s),
        infer_samples_per_s=float(batch_size / np.median(big)),
        infer_samples_per_s_bs1=float(1.0 / np.median(one)),
        latency_ms_p50=float(np.percentile(one, 50) * 1000),
        latency_ms_p95=float(np.percentile(one, 95) * 1000),
        peak_mem_mb=float(mem),
        peak_mem_kind=kind,
        batch_size=int(batch_size),
        repetitions=cfg.repetitions,
    )
