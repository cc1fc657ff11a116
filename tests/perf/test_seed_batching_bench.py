"""Batched vs sequential evaluation seeds (issue 15): samples/s for K = 1, 3, 5, 10, a pooled and a
token strategy. `tox -e bench` writes them with the other benchmarks (extra_info carries K and mode)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fusebench.measure.seed_batching import SPEC, _data
from fusebench.strategies import STRATEGIES
from fusebench.training.batched import fit_seeds
from fusebench.training.loop import TrainConfig

pytestmark = pytest.mark.perf


@pytest.mark.parametrize("mode", ["sequential", "batched"])
@pytest.mark.parametrize("members", [1, 3, 5, 10])
@pytest.mark.parametrize("strategy", ["concat", "early_transformer"])
def test_seed_batching(benchmark, strategy, members, mode):
    torch.set_num_threads(1)
    info = STRATEGIES.get(strategy)
    train, val = _data(info.input_kind, SPEC, 512)
    cfg = TrainConfig(epochs=2, patience=3, batch_size=128)
    params = dataclasses.replace(info.params(), dropout=0.0)

    def build(seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        return info.build(SPEC, params)

    seeds = list(range(1000, 1000 + members))
    fits = benchmark.pedantic(lambda: fit_seeds(build, seeds, train, val, cfg, "accuracy", batched=mode == "batched"),
                              rounds=3, warmup_rounds=1)
    benchmark.extra_info.update({"strategy": strategy, "members": members, "mode": mode, "batched": fits.batched,
                                 "samples": members * len(train) * cfg.epochs})
    assert len(fits.results) == members


@pytest.mark.parametrize("mode", ["sequential", "batched"])
@pytest.mark.parametrize("members", [1, 3, 5, 10])
@pytest.mark.parametrize("strategy", ["concat", "early_transformer"])
def test_trial_batching(benchmark, strategy, members, mode):
    """B trial configurations (own lr/weight decay, one shape) batched as one model vs one by one."""
    from fusebench.measure.seed_batching import trial_configs
    from fusebench.training.loop import train_model
    from fusebench.training.members import Member, fit_members

    torch.set_num_threads(1)
    info = STRATEGIES.get(strategy)
    train, val = _data(info.input_kind, SPEC, 512)
    cfg = TrainConfig(epochs=2, patience=3, batch_size=128)
    configs = trial_configs(strategy, members)

    def build(config, seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        return info.build(SPEC, config)

    def fit() -> int:
        if mode == "batched" and members > 1:
            return len(fit_members([Member(build(c, s), s) for s, c in enumerate(configs)], train, val, cfg, "accuracy"))
        return len([train_model(build(c, s), train, val, cfg, "accuracy", s) for s, c in enumerate(configs)])

    assert benchmark.pedantic(fit, rounds=3, warmup_rounds=1) == members
    benchmark.extra_info.update({"strategy": strategy, "members": members, "mode": mode,
                                 "samples": members * len(train) * cfg.epochs})
