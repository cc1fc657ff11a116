"""Throughput of a whole pipeline call (e.g. ranking every test query of a retrieval task).

A retrieval cell's inference is not one forward pass over a batch but a pipeline: embed the
gallery and the queries, block-wise top-k or ranking (and, for a re-ranker, the fusion model
scoring each query's top-k candidates). Its figure is *queries per second* of that whole call:
`warmup` untimed calls, then `repetitions` timed ones (time.perf_counter after a device
synchronisation), median and p95 of the per-call seconds. One call processes every test query, so
repetitions are few (`RETRIEVAL_REPETITIONS`), unlike the 30 forward passes of a classification
model (bench/measure/timing.py). Peak memory is measured over the timed region as there.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from fusebench.measure.timing import PeakMemory, device_name, synchronize
from fusebench.results.records import Throughput

RETRIEVAL_WARMUP = 1
RETRIEVAL_REPETITIONS = 3


def time_pipeline(
    fn: Callable[[], object], n_items: int, device: torch.device, train_samples_per_s: float,
    batch_size: int, warmup: int = RETRIEVAL_WARMUP, repetitions: int = RETRIEVAL_REPETITIONS,
) -> Throughput:
    """Items (queries) per second of `fn()`, which processes `n_items` per call (module doc)."""
    if n_items < 1 or repetitions < 1 or warmup < 0:
        raise ValueError(f"n_items >= 1, repetitions >= 1, warmup >= 0 needed: {n_items}, {repetitions}, {warmup}")
    for _ in range(warmup):
        fn()
    synchronize(device)
    seconds = []
    with PeakMemory(device) as mem:
        for _ in range(repetitions):
            t0 = time.perf_counter()
            fn()
            synchronize(device)
            seconds.append(time.perf_counter() - t0)
    s = np.asarray(seconds)
    nan = float("nan")
    return Throughput(
        train_samples_per_s=float(train_samples_per_s),
        infer_samples_per_s=float(n_items / np.median(s)),
        infer_samples_per_s_bs1=nan,
        latency_ms_p50=nan,
        latency_ms_p95=nan,
        peak_mem_mb=float(mem.peak_mb),
        peak_mem_kind=mem.kind,
        batch_size=int(batch_size),
        repetitions=repetitions,
        torch_version=torch.__version__,
        cuda_version=torch.version.cuda,
        timer="perf_counter",
        device=device_name(device),
        warmup=warmup,
        peak_mem_delta_mb=None if mem.delta_mb is None else float(mem.delta_mb),
        batch_ms_p50=float(np.percentile(s, 50) * 1000),
        batch_ms_p95=float(np.percentile(s, 95) * 1000),
    )
