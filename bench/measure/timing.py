"""Throughput measurement: warm-up, device synchronisation, many repetitions, median and p95.

Protocol (see docs/throughput.md):
- `warmup` untimed forward passes, then `repetitions` (default 30) timed ones; the median is
  reported as samples/s, the 50th/95th percentiles of the batch-size-1 passes as latency.
- On CUDA each repetition is timed with CUDA events (start/end recorded on the stream, the end
  event synchronised); elsewhere with `time.perf_counter` around a forward pass followed by a
  device synchronisation (a no-op on CPU, whose kernels are synchronous).
- Inputs rotate: repetition i reads rows `[i*B, (i+1)*B)` (mod N) of the evaluation inputs, sliced
  *before* its timer starts, so one cached batch does not flatter and slicing is not timed.
- Peak memory: on CUDA `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`; on
  Linux CPU the process's peak RSS (VmHWM) *within the measured region*, reset through
  `/proc/self/clear_refs` just before it (kind `cpu_peak_rss_region`), with the growth over the
  RSS at the start in `peak_mem_delta_mb`; where that reset is unavailable, `ru_maxrss`, the
  peak of the whole process so far (kind `cpu_peak_rss_process`, an upper bound).
- A batch size that runs out of memory halves until it fits; the sizes that failed are listed in
  `oom_backoff` and the measurement goes on. If even batch size 1 fails the figures are NaN and
  `error` says why — the sweep is never aborted.

Nothing here calls `.cuda()`: every tensor goes through `torch.device`.
"""

from __future__ import annotations

import gc
import platform
import re
import resource
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from fusebench.results.records import Throughput
from fusebench.strategies.base import FusionModel

_PROC_STATUS = Path("/proc/self/status")
_PROC_CLEAR_REFS = Path("/proc/self/clear_refs")


@dataclass(frozen=True)
class TimingConfig:
    warmup: int = 5
    repetitions: int = 30
    batch_size: int = 256

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.repetitions < 1 or self.batch_size < 1:
            raise ValueError(f"warmup >= 0, repetitions >= 1 and batch_size >= 1 needed: {self}")


def device_name(device: torch.device) -> str:
    """`cuda:<GPU name>` or `cpu:<processor>` — what the record's `device` says."""
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    if device.type == "cpu":
        return f"cpu:{_cpu_model() or platform.processor() or platform.machine()}"
    return str(device)


def _cpu_model() -> str | None:
    """The CPU's model name from /proc/cpuinfo (Linux); platform.processor() there is only the arch."""
    try:
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
    except OSError:
        return None
    return m.group(1).strip() if m else None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def is_out_of_memory(exc: BaseException) -> bool:
    """torch.OutOfMemoryError (CUDA) or a CPU allocator failure (a RuntimeError that says so)."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    msg = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg)


def _rows(inputs: Mapping[str, Tensor], start: int, batch_size: int) -> dict[str, Tensor]:
    """Rows [start, start + batch_size) modulo N of every input, on the inputs' device."""
    n = next(iter(inputs.values())).shape[0]
    if start + batch_size <= n:
        return {k: v[start : start + batch_size] for k, v in inputs.items()}
    idx = torch.arange(start, start + batch_size) % n
    return {k: v[idx.to(v.device)] for k, v in inputs.items()}


def _time_forward(
    model: Callable[[Mapping[str, Tensor]], Tensor],
    inputs: Mapping[str, Tensor],
    batch_size: int,
    warmup: int,
    repetitions: int,
    device: torch.device,
) -> np.ndarray:
    """Seconds of each of `repetitions` timed forward passes, inputs rotated through `inputs`."""
    n = next(iter(inputs.values())).shape[0]
    times = np.empty(repetitions)
    with torch.inference_mode():
        for i in range(warmup):
            model(_rows(inputs, (i * batch_size) % n, batch_size))
        synchronize(device)
        for r in range(repetitions):
            batch = _rows(inputs, ((warmup + r) * batch_size) % n, batch_size)
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                model(batch)
                end.record()
                end.synchronize()
                times[r] = start.elapsed_time(end) / 1000.0
            else:
                synchronize(device)
                t0 = time.perf_counter()
                model(batch)
                synchronize(device)
                times[r] = time.perf_counter() - t0
    return times


def _proc_kb(field: str) -> float | None:
    try:
        m = re.search(rf"^{field}:\s+(\d+) kB", _PROC_STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return float(m.group(1)) if m else None


class PeakMemory:
    """Peak memory of a measured region: `with PeakMemory(device) as pm: ...; pm.peak_mb, pm.kind`."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.kind = ""
        self.peak_mb = float("nan")
        self.delta_mb: float | None = None
        self._start_mb = 0.0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start_mb = torch.cuda.memory_allocated(self.device) / 2**20
            self.kind = "cuda_max_allocated"
            return self
        # Collect garbage first: a cyclic-GC pass inside the region would free memory counted in
        # the reset high-water mark, and the region's own allocations could then peak below it.
        gc.collect()
        try:
            _PROC_CLEAR_REFS.write_text("5")  # Linux >= 4.0: resets VmHWM to the current RSS
            start = _proc_kb("VmHWM")  # the reset value itself, not an RSS read at another moment
        except OSError:
            start = None
        self.kind = "cpu_peak_rss_region" if start is not None else "cpu_peak_rss_process"
        self._start_mb = (start or 0.0) / 1024
        return self

    def __exit__(self, *exc: object) -> None:
        if self.kind == "cuda_max_allocated":
            synchronize(self.device)
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif self.kind == "cpu_peak_rss_region":
            self.peak_mb = (_proc_kb("VmHWM") or float("nan")) / 1024
        else:
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            self.peak_mb = rss / 2**20 if sys.platform == "darwin" else rss / 1024
            return
        self.delta_mb = max(self.peak_mb - self._start_mb, 0.0)


def peak_memory_mb(device: torch.device) -> tuple[float, str]:
    """Process-wide peak so far (CUDA: since the last reset). Prefer `PeakMemory` around a region."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (rss / 2**20 if sys.platform == "darwin" else rss / 1024), "cpu_peak_rss_process"


def flops_per_sample(model: FusionModel, inputs: Mapping[str, Tensor]) -> float | None:
    """FLOPs of one forward pass on a single example, from torch.utils.flop_counter (a multiply-add
    counts 2). None when an op has no FLOP formula or the pass fails."""
    one = {k: v[:1] for k, v in inputs.items()}
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            model(one)
        return float(counter.get_total_flops())
    except Exception:
        return None
    finally:
        model.train(was_training)


def _fit(
    model: FusionModel, inputs: Mapping[str, Tensor], batch_size: int, cfg: TimingConfig, device: torch.device,
    oom: list[int],
) -> tuple[int, np.ndarray | None, str | None]:
    """Time at `batch_size`, halving on out-of-memory; returns (size used, times or None, error)."""
    while True:
        try:
            return batch_size, _time_forward(model, inputs, batch_size, cfg.warmup, cfg.repetitions, device), None
        except Exception as exc:  # only out-of-memory is handled here; anything else propagates
            if not is_out_of_memory(exc):
                raise
            oom.append(batch_size)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            if batch_size == 1:
                return batch_size, None, f"out of memory at batch size 1: {str(exc).splitlines()[0][:200]}"
            batch_size = max(batch_size // 2, 1)


def measure(
    model: FusionModel, inputs: Mapping[str, Tensor], device: torch.device, cfg: TimingConfig, train_samples_per_s: float
) -> Throughput:
    """Inference throughput at the evaluation batch size and at batch size 1, latency percentiles at
    batch size 1, and the peak memory of the measured region (see the module docstring)."""
    model.eval()
    n = next(iter(inputs.values())).shape[0]
    oom: list[int] = []
    with PeakMemory(device) as mem:
        batch_size, big, err = _fit(model, inputs, min(cfg.batch_size, n), cfg, device, oom)
        _, one, err1 = _fit(model, inputs, 1, cfg, device, oom) if err is None else (1, None, err)
    nan = float("nan")
    return Throughput(
        train_samples_per_s=float(train_samples_per_s),
        infer_samples_per_s=float(batch_size / np.median(big)) if big is not None else nan,
        infer_samples_per_s_bs1=float(1.0 / np.median(one)) if one is not None else nan,
        latency_ms_p50=float(np.percentile(one, 50) * 1000) if one is not None else nan,
        latency_ms_p95=float(np.percentile(one, 95) * 1000) if one is not None else nan,
        peak_mem_mb=float(mem.peak_mb),
        peak_mem_kind=mem.kind,
        batch_size=int(batch_size),
        repetitions=cfg.repetitions,
        oom_backoff=oom,
        torch_version=torch.__version__,
        cuda_version=torch.version.cuda,
        timer="cuda_events" if device.type == "cuda" else "perf_counter",
        device=device_name(device),
        warmup=cfg.warmup,
        peak_mem_delta_mb=None if mem.delta_mb is None else float(mem.delta_mb),
        batch_ms_p50=float(np.percentile(big, 50) * 1000) if big is not None else nan,
        batch_ms_p95=float(np.percentile(big, 95) * 1000) if big is not None else nan,
        error=err or err1,
    )
