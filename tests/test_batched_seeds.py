"""Batched seeds (issue 15): member k of a batched fit is the sequential fit of seed k.

Generated from the registry: every trainable strategy is fitted on three seeds both ways with
dropout off (with dropout on, members draw their own masks and agree in distribution only), and
the validation predictions must match within float tolerance. A strategy that cannot be batched
must fall back to sequential training and say why."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fusebench.strategies import STRATEGIES, FusionSpec
from fusebench.strategies.base import key_padding
from fusebench.training.batched import ATTENTION_ON_CPU, fit_seeds, not_batchable
from fusebench.training.loop import Batch, TrainConfig, predict_proba, train_model
from fusebench.training.members import Member, fit_members

pytestmark = pytest.mark.usefixtures("one_thread")

N, C = 160, 3
CPU = torch.device("cpu")
SEEDS = [1000, 1001, 1002]
CFG = TrainConfig(epochs=4, patience=2, batch_size=32)
NAMES = [n for n in STRATEGIES.names() if STRATEGIES.get(n).trainable]


def _data(kind: str) -> tuple[FusionSpec, Batch, Batch]:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, C, (N,), generator=g)
    if kind == "pooled":
        spec = FusionSpec({"a": 8, "b": 6}, {"a": 4, "b": 3}, C)
        x = {"a": torch.randn(N, 8, generator=g) + y[:, None] * 0.7, "b": torch.randn(N, 6, generator=g)}
    else:
        spec = FusionSpec({"a": 5, "b": 5}, {"a": 4, "b": 3}, C)
        x = {"a": torch.randn(N, 4, 5, generator=g) + y[:, None, None] * 0.7, "b": torch.randn(N, 3, 5, generator=g)}
        x["b"][:5, -1] = 0.0  # some padding rows
    cut = 110
    return spec, Batch({k: v[:cut] for k, v in x.items()}, y[:cut]), Batch({k: v[cut:] for k, v in x.items()}, y[cut:])


def _builder(name: str, spec: FusionSpec):
    info = STRATEGIES.get(name)
    spec = spec.restrict([spec.modalities[0]]) if info.per_modality else spec
    defaults = info.params()
    params = dataclasses.replace(defaults, dropout=0.0) if hasattr(defaults, "dropout") else defaults

    def build(seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        return info.build(spec, params)

    return build, spec


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.slow
def test_batched_member_equals_sequential_seed(name):
    spec, train, val = _data(STRATEGIES.get(name).input_kind)
    build, spec = _builder(name, spec)
    keep = list(spec.dims)
    train = Batch({k: v for k, v in train.inputs.items() if k in keep}, train.labels)
    val = Batch({k: v for k, v in val.inputs.items() if k in keep}, val.labels)
    fits = fit_seeds(build, SEEDS, train, val, CFG, "accuracy")
    sequential = [train_model(build(s), train, val, CFG, "accuracy", s) for s in SEEDS]
    if not fits.batched:
        assert fits.reason, f"{name}: fell back to sequential without saying why"
    for seed, got, want in zip(SEEDS, fits.results, sequential):
        assert got.best_epoch == want.best_epoch, f"{name} seed {seed}: best epoch {got.best_epoch} != {want.best_epoch}"
        assert got.val_metric == pytest.approx(want.val_metric, abs=1e-6)
        assert (got.best_step, got.steps_run) == (want.best_step, want.steps_run), f"{name} seed {seed}"
        np.testing.assert_allclose(predict_proba(got.model, val.inputs), predict_proba(want.model, val.inputs),
                                   atol=1e-3, err_msg=f"{name} seed {seed}")


def test_batched_pooled_strategies_really_batch():
    """The common pooled strategies must take the batched path (a silent fallback would hide a regression)."""
    spec, train, val = _data("pooled")
    for name in ("concat", "tensor_fusion", "logit_mean"):
        build, _ = _builder(name, spec)
        assert fit_seeds(build, SEEDS, train, val, CFG, "accuracy").batched, name


def test_members_keep_their_own_data_order_and_init():
    """Batched members with different seeds end in different states (per-member init and order)."""
    spec, train, val = _data("pooled")
    build, _ = _builder("concat", spec)
    fits = fit_seeds(build, SEEDS, train, val, CFG, "accuracy")
    probs = [predict_proba(r.model, val.inputs) for r in fits.results]
    assert not np.allclose(probs[0], probs[1]) and not np.allclose(probs[1], probs[2])


def test_unbatchable_configurations_say_why():
    spec, train, val = _data("pooled")
    build, _ = _builder("concat", spec)
    models = [build(s) for s in SEEDS]
    assert "modality dropout" in not_batchable(models, dataclasses.replace(CFG, modality_dropout=0.2), CPU)
    assert "single member" in not_batchable(models[:1], CFG, CPU)
    assert not_batchable(models, CFG, CPU) == ""
    fits = fit_seeds(build, SEEDS, train, val, dataclasses.replace(CFG, modality_dropout=0.2), "accuracy")
    assert not fits.batched and "modality dropout" in fits.reason and len(fits.results) == 3


@pytest.mark.slow
def test_run_records_batching_and_phases(tmp_path, synthetic_bundle, monkeypatch):
    """A real (tiny, generated) run: records say how many seeds trained together and carry phase
    seconds; run.json holds wall time per phase and the in-cell process-seconds; --sequential-seeds
    trains one seed at a time (on this separable toy task both modes reach the same test scores)."""
    import json

    from fusebench.cli import main
    from fusebench.results.records import load_records

    data, cfg = synthetic_bundle
    monkeypatch.setenv("FUSEBENCH_CONFIG_DIR", str(cfg))
    runs = {}
    for mode, extra in (("batched", []), ("sequential", ["--sequential-seeds"])):
        out = tmp_path / mode
        args = ["run", "--datasets", "toy", "--strategies", "concat", "--trials", "2", "--seeds", "3",
                "--data-dir", str(data), "--out", str(out), *extra]
        assert main(args) == 0
        runs[mode] = {r.seed: r for r in load_records(out / "results.jsonl")}
        meta = json.loads((out / "run.json").read_text())
        assert {"data", "encoding", "cells", "statistics", "leaderboard"} <= set(meta["phases"])
        assert meta["cell_seconds"]["evaluation"] > 0 and meta["cell_seconds"]["search"] > 0
    assert {r.seeds_batched for r in runs["batched"].values()} == {3}
    assert {r.seeds_batched for r in runs["sequential"].values()} == {1}
    for seed, rec in runs["batched"].items():
        assert set(rec.phase_seconds) == {"evaluation", "robustness", "throughput"}
        assert rec.main_metric == pytest.approx(runs["sequential"][seed].main_metric, abs=1e-6)


TOKEN_NAMES = [n for n in NAMES if STRATEGIES.get(n).input_kind == "tokens"]


@pytest.mark.parametrize("name", TOKEN_NAMES)
def test_attention_models_batch_under_vmap_and_equal_sequential(name):
    """The batched engine itself (used as is on a GPU) traces the token strategies and gives each member
    its sequential fit. Failed before key_padding was made branch-free: vmap refused its data-dependent `if`."""
    spec, train, val = _data("tokens")
    build, _ = _builder(name, spec)
    fits = fit_members([Member(build(s), s) for s in SEEDS], train, val, CFG, "accuracy")
    for seed, fit in zip(SEEDS, fits):
        want = train_model(build(seed), train, val, CFG, "accuracy", seed)
        assert fit.result is not None and (fit.result.best_step, fit.result.steps_run) == (want.best_step, want.steps_run)
        np.testing.assert_allclose(predict_proba(fit.result.model, val.inputs), predict_proba(want.model, val.inputs),
                                   atol=1e-3, err_msg=f"{name} seed {seed}")


def test_attention_models_train_one_after_another_on_one_cpu_thread_only():
    """Decided by where the data trains (fit_seeds builds the models on the CPU and moves them later)
    and by the CPU threads: batched attention measured slower on one thread, faster on 16."""
    spec, _, _ = _data("tokens")
    build, _ = _builder("mult", spec)
    models = [build(s) for s in SEEDS]  # built on the CPU, as fit_seeds builds them
    assert torch.get_num_threads() == 1  # the one_thread fixture, as in training
    assert not_batchable(models, CFG, CPU) == ATTENTION_ON_CPU
    assert not_batchable(models, CFG, torch.device("cuda")) == ""
    torch.set_num_threads(2)
    try:
        assert not_batchable(models, CFG, CPU) == ""
    finally:
        torch.set_num_threads(1)
    build, _ = _builder("concat", _data("pooled")[0])
    assert not_batchable([build(s) for s in SEEDS], CFG, CPU) == ""


def test_a_vmap_failure_without_a_message_still_falls_back():
    """`str(exc).splitlines()[0]` raised IndexError for a bare exception and broke the fallback."""
    from fusebench.training.batched import vmap_failed

    assert vmap_failed(NotImplementedError()) == "vmap failed: NotImplementedError: "
    assert vmap_failed(RuntimeError("a\nb")) == "vmap failed: RuntimeError: a"


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 4), st.integers(1, 6), st.data())
def test_key_padding_matches_its_definition_and_traces_under_vmap(batch, steps, data):
    """Padding positions (all-zero tokens) are masked, except the first position of an all-padding row."""
    present = torch.tensor(data.draw(st.lists(st.lists(st.booleans(), min_size=steps, max_size=steps),
                                              min_size=batch, max_size=batch)))
    x = torch.randn(batch, steps, 3) * present[..., None]
    want = ~present.clone()
    want[~present.any(dim=1), 0] = False
    assert torch.equal(key_padding(x), want)
    assert torch.equal(torch.func.vmap(key_padding)(x[None].expand(2, -1, -1, -1)), want[None].expand(2, -1, -1))


def test_throughput_batching_rows_are_written_to_out_and_measured_where_asked(tmp_path):
    """`--seed-batching/--trial-batching` rows go into the --out JSON (they were only printed), and the
    members train on `device`: the data and models of the measurement follow it (they always sat on
    the CPU, whatever --device said)."""
    import json

    from fusebench.cli import main
    from fusebench.measure.seed_batching import SPEC, _data

    out = tmp_path / "t.json"
    assert main(["throughput", "-q", "--device", "cpu", "--strategies", "concat", "--batch-sizes", "8",
                 "--repetitions", "1", "--warmup", "0", "--seed-batching", "2", "--trial-batching", "2",
                 "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    for key in ("seed_batching", "trial_batching"):
        rows = doc[key]
        assert {(r["strategy"], r["members"], r["mode"]) for r in rows} == {("concat", 2, "sequential"), ("concat", 2, "batched")}
        assert all(r["samples_per_s"] > 0 for r in rows)
    train, _ = _data("pooled", SPEC, 16, device=torch.device("meta"))
    assert train.labels.device.type == "meta" and all(v.device.type == "meta" for v in train.inputs.values())
