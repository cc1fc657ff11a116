"""Harness overhead: bench.train's training loop vs a bare PyTorch loop on the same batches.

Run with `pytest -m perf tests/perf` (or `tox -e bench`, which writes runs/bench.json). The
benchmark times three harness epochs (validation included, as a run does it); the harness/bare
ratio of training samples/s (validation excluded on both sides, interleaved repeats, medians) goes
into extra_info and must be >= 0.9. Compare against a saved baseline:

    pytest -m perf tests/perf --benchmark-save=baseline
    pytest -m perf tests/perf --benchmark-compare=0001 --benchmark-compare-fail=median:10%

See docs/throughput.md.
"""

from __future__ import annotations

import pytest
import torch

from fusebench.measure.throughput import DEFAULT_SHAPES, expand_names, overhead_ratio, synthetic_batch
from fusebench.strategies import STRATEGIES
from fusebench.training.loop import TrainConfig, train_model

pytestmark = pytest.mark.perf

NAMES = ["concat", "gmu", "logit_mean", "unimodal", "early_transformer", "mult"]


@pytest.mark.parametrize("name", NAMES)
def test_harness_overhead_ratio(benchmark, name):
    if name not in STRATEGIES.names():
        pytest.skip(f"{name} is not registered")
    torch.set_num_threads(1)
    device = torch.device("cpu")
    result = overhead_ratio(name, device, repeats=5)
    benchmark.extra_info.update({"ratio": result.ratio, "bare_samples_per_s": result.bare_samples_per_s,
                                 "harness_samples_per_s": result.harness_samples_per_s})
    info = STRATEGIES.get(name)
    _, _, views = expand_names([name], DEFAULT_SHAPES.tokens.modalities)[0]
    spec = DEFAULT_SHAPES.spec(info.input_kind).restrict(views)
    data = synthetic_batch(spec, info.input_kind, 1024, device)
    val = synthetic_batch(spec, info.input_kind, 64, device, seed=1)
    cfg = TrainConfig(epochs=3, patience=4, batch_size=128)

    def three_epochs() -> None:
        torch.manual_seed(0)
        train_model(info.build(spec), data, val, cfg, "accuracy", seed=0)

    benchmark.pedantic(three_epochs, rounds=5, warmup_rounds=1)
    assert result.ratio >= 0.9, f"{name}: harness reaches only {result.ratio:.3f}× the bare loop"
