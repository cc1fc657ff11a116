"""How much batching the evaluation seeds buys: samples/s of K members trained batched vs one after
another, for a given strategy, on generated inputs shaped like a real task (issue 15).

Used by `fusebench throughput --seed-batching 1,3,5,10` and the perf benchmark; the figure is the
total member-samples trained per second of wall time (K × train rows × epochs / seconds).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch

from fusebench.strategies import STRATEGIES, FusionSpec
from fusebench.training.batched import fit_seeds, vmap_failed
from fusebench.training.loop import Batch, TrainConfig

SPEC = FusionSpec({"audio": 128, "image": 256, "text": 384}, {"audio": 8, "image": 9, "text": 16}, 10)


@dataclass(frozen=True)
class SeedBatchingRow:
    strategy: str
    members: int
    mode: str  # "batched" or "sequential"
    samples_per_s: float
    seconds: float
    batched: bool  # whether the batched path was really taken
    reason: str


def _data(kind: str, spec: FusionSpec, n: int, seed: int = 0,
          device: torch.device | None = None) -> tuple[Batch, Batch]:
    """Generated rows on `device` (the CPU by default): the members train where their data is."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, spec.num_classes, (n,), generator=g)
    if kind == "pooled":
        x = {m: torch.randn(n, d, generator=g) for m, d in spec.dims.items()}
    else:
        x = {m: torch.randn(n, spec.tokens[m], d, generator=g) for m, d in spec.dims.items()}
    cut = int(n * 0.8)
    dev = device or torch.device("cpu")
    x, y = {k: v.to(dev) for k, v in x.items()}, y.to(dev)
    return (Batch({k: v[:cut] for k, v in x.items()}, y[:cut]), Batch({k: v[cut:] for k, v in x.items()}, y[cut:]))


def measure_seed_batching(strategy: str, members: list[int], n: int = 1024, epochs: int = 3,
                          batch_size: int = 128, device: torch.device | None = None) -> list[SeedBatchingRow]:
    """Fit K ∈ `members` seeds of `strategy` for a fixed number of epochs (no early stop), both ways,
    on `device` (the CPU by default; `fusebench throughput --device` passes its own)."""
    info = STRATEGIES.get(strategy)
    spec = SPEC.restrict(["text"]) if info.per_modality else SPEC
    train, val = _data(info.input_kind, spec, n, device=device)
    cfg = TrainConfig(epochs=epochs, patience=epochs + 1, batch_size=batch_size)
    params = info.params()
    if hasattr(params, "dropout"):
        params = dataclasses.replace(params, dropout=0.0)  # so that no member stops early by chance
    rows = []

    def build(seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        return info.build(spec, params).to(train.labels.device)

    fit_seeds(build, [0, 1], train, val, dataclasses.replace(cfg, epochs=1), "accuracy")  # warm-up
    for k in members:
        seeds = list(range(1000, 1000 + k))
        for mode in ("sequential", "batched"):
            t0 = time.perf_counter()
            fits = fit_seeds(build, seeds, train, val, cfg, "accuracy", batched=mode == "batched")
            seconds = time.perf_counter() - t0
            samples = k * len(train) * epochs
            rows.append(SeedBatchingRow(strategy, k, mode, samples / seconds, seconds, fits.batched, fits.reason))
    return rows


def trial_configs(strategy: str, members: int) -> list:
    """B trial configurations of one shape (the strategy's defaults) that differ where a batch lets
    them differ: lr and weight decay spread over their search ranges, dropout 0 (no early stop by chance)."""
    params = STRATEGIES.get(strategy).params()
    out = []
    for b in range(members):
        frac = b / max(members - 1, 1)
        config = dataclasses.replace(params, lr=1e-4 * 10 ** (2 * frac), weight_decay=1e-6 * 10 ** (4 * frac))
        out.append(dataclasses.replace(config, dropout=0.0) if hasattr(config, "dropout") else config)
    return out


def measure_trial_batching(strategy: str, members: list[int], n: int = 1024, epochs: int = 3,
                           batch_size: int = 128, device: torch.device | None = None) -> list[SeedBatchingRow]:
    """Fit B ∈ `members` trial configurations (per-member lr and weight decay, so the batched fit keeps
    per-member leaves stacked at every step) batched as one model vs one after another."""
    from fusebench.training.loop import train_model
    from fusebench.training.members import Member, fit_members

    info = STRATEGIES.get(strategy)
    spec = SPEC.restrict(["text"]) if info.per_modality else SPEC
    train, val = _data(info.input_kind, spec, n, device=device)
    cfg = TrainConfig(epochs=epochs, patience=epochs + 1, batch_size=batch_size)

    def build(config, seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        return info.build(spec, config).to(train.labels.device)

    warm = trial_configs(strategy, 2)
    untraceable = ""  # a forward vmap cannot trace: every batched row falls back, saying why (it used to crash)
    try:
        fit_members([Member(build(c, s), s) for s, c in enumerate(warm)], train, val,
                    dataclasses.replace(cfg, epochs=1), "accuracy")
    except (RuntimeError, NotImplementedError, ValueError) as exc:
        untraceable = vmap_failed(exc)
    rows = []
    for b in members:
        configs = trial_configs(strategy, b)
        for mode in ("sequential", "batched"):
            t0 = time.perf_counter()
            reason, batched = untraceable, mode == "batched" and b > 1 and not untraceable
            if batched:
                try:
                    fit_members([Member(build(c, s), s) for s, c in enumerate(configs)], train, val, cfg, "accuracy")
                except (RuntimeError, NotImplementedError, ValueError) as exc:
                    reason, batched = vmap_failed(exc), False
            if not batched:
                for s, c in enumerate(configs):
                    train_model(build(c, s), train, val, cfg, "accuracy", s)
            seconds = time.perf_counter() - t0
            rows.append(SeedBatchingRow(strategy, b, mode, b * len(train) * epochs / seconds, seconds, batched, reason))
    return rows
