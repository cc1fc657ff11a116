"""Microbenchmarks: forward + backward of every registered strategy on a fixed batch (B=64).

Run with `tox -e bench` or `pytest -m perf tests/perf`; compare against a saved baseline with
`--benchmark-save=NAME` then `--benchmark-compare=NAME`.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fusebench.strategies import STRATEGIES, FusionSpec

pytestmark = pytest.mark.perf

SPEC = FusionSpec({"audio": 128, "image": 1280, "text": 384}, {"audio": 16, "image": 9, "text": 32}, 10)
B = 64


@pytest.mark.parametrize("name", STRATEGIES.names())
def test_forward_backward(benchmark, name):
    info = STRATEGIES.get(name)
    spec = SPEC.restrict(["text"]) if info.per_modality else SPEC
    torch.manual_seed(0)
    model = info.build(spec).train()
    model.fit_prior(torch.arange(10))
    if info.input_kind == "pooled":
        inputs = {m: torch.randn(B, d) for m, d in spec.dims.items()}
    else:
        inputs = {m: torch.randn(B, spec.tokens[m], d) for m, d in spec.dims.items()}
    labels = torch.randint(0, 10, (B,))
    trainable = any(p.requires_grad for p in model.parameters())

    def step() -> None:
        model.zero_grad(set_to_none=True)
        custom = getattr(model, "training_loss", None)
        loss = custom(inputs, labels) if custom else F.cross_entropy(model(inputs), labels)
        if trainable:
            loss.backward()

    benchmark.extra_info.update({"strategy": name, "family": info.family, "batch_size": B,
                                 "params": sum(p.numel() for p in model.parameters())})
    benchmark(step)
