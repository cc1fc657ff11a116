"""GPU-only checks (marker `gpu`): training, timing and blocked retrieval on a CUDA device.

Skipped, with the reason, where `torch.cuda.is_available()` is false; `scripts/gpu.sh` runs them on
a GPU machine before the standard suite."""

from __future__ import annotations

import pytest
import torch

from fusebench.core.retrieval_math import blocked_ranks, blocked_topk
from fusebench.measure.timing import TimingConfig, measure
from fusebench.strategies import STRATEGIES, FusionSpec
from fusebench.training.loop import Batch, TrainConfig, train_model

gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (torch.cuda.is_available() is false)")
CUDA = torch.device("cuda")


def _batch(n: int, device: torch.device, seed: int = 0) -> Batch:
    """A two-class problem whose signal survives the strategies' input LayerNorm: the class moves the
    image features along a zero-mean ±1 pattern. (A shift of every feature by the label, as this test
    had, is exactly what a per-example LayerNorm subtracts: the model stayed at chance, 0.496, and
    the test failed on its first real GPU, an H200.)"""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    pattern = torch.tensor([1.0, -1.0]).repeat(8)
    x = {"image": torch.randn(n, 16, generator=g) + (2 * y[:, None] - 1) * pattern, "text": torch.randn(n, 8, generator=g)}
    return Batch({k: v.to(device) for k, v in x.items()}, y.to(device))


def _train_concat(device: torch.device):
    spec = FusionSpec({"image": 16, "text": 8}, {"image": 1, "text": 1}, 2)
    model = STRATEGIES.get("concat").build(spec).to(device)
    res = train_model(model, _batch(512, device), _batch(256, device, seed=1), TrainConfig(epochs=5, patience=5), "accuracy", 0)
    return model, res


def test_the_gpu_training_problem_is_learnable_on_the_cpu():
    """The GPU test below can only fail for a GPU reason if its problem is learnable at all."""
    _, res = _train_concat(torch.device("cpu"))
    assert res.val_metric > 0.8


@gpu
@needs_cuda
def test_training_stays_on_the_gpu_and_learns():
    model, res = _train_concat(CUDA)
    assert next(model.parameters()).device.type == "cuda" and res.val_metric > 0.8


@gpu
@needs_cuda
def test_timing_uses_cuda_events_and_reports_gpu_memory():
    spec = FusionSpec({"image": 16, "text": 8}, {"image": 1, "text": 1}, 2)
    model = STRATEGIES.get("concat").build(spec).to(CUDA)
    tp = measure(model, _batch(512, CUDA).inputs, CUDA, TimingConfig(warmup=2, repetitions=5, batch_size=64), 1.0)
    assert tp.timer == "cuda_events" and tp.peak_mem_kind == "cuda_max_allocated" and tp.device.startswith("cuda:")


@gpu
@needs_cuda
def test_blocked_retrieval_on_gpu_equals_cpu():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(3000, 32, generator=g), torch.randn(1500, 32, generator=g)
    qg, kg = torch.arange(3000) % 1500, torch.arange(1500)
    cpu = blocked_ranks(q, k, qg, kg, block=256)
    gpu = blocked_ranks(q.to(CUDA), k.to(CUDA), qg.to(CUDA), kg.to(CUDA), block=256).cpu()
    assert (cpu - gpu).abs().max() <= 1  # float reductions may order one near-tie differently
    s_cpu, _ = blocked_topk(q, k, 10, block=256)
    s_gpu, _ = blocked_topk(q.to(CUDA), k.to(CUDA), 10, block=256)
    torch.testing.assert_close(s_gpu.cpu(), s_cpu, atol=1e-4, rtol=1e-4)


@gpu
@needs_cuda
@pytest.mark.parametrize("name", ["coattention", "early_transformer", "mbt", "mult"])
def test_attention_members_batch_on_the_gpu_and_equal_their_sequential_fits(name):
    """On an H200 every attention model's vmap failed ("LSE is not correctly aligned": the fused
    efficient-attention kernel) and fell back to one member at a time; fit_members now runs the math
    kernel. Each batched member must equal its own sequential fit on the GPU."""
    import numpy as np

    from fusebench.training.loop import predict_proba
    from fusebench.training.members import Member, fit_members
    from tests.test_trial_batch import CFG, SEEDS, _setup

    build, train, val, test = _setup(name)
    train, val, test = (Batch({k: v.to(CUDA) for k, v in b.inputs.items()}, b.labels.to(CUDA)) for b in (train, val, test))

    def on_gpu(k: int) -> torch.nn.Module:
        return build(k).to(CUDA)

    fits = fit_members([Member(on_gpu(k), s) for k, s in enumerate(SEEDS)], train, val, CFG, "accuracy")
    for k, fit in enumerate(fits):
        assert fit.error is None and fit.result is not None, f"{name} member {k}: {fit.error}"
        want = train_model(on_gpu(k), train, val, CFG, "accuracy", SEEDS[k])
        assert fit.result.best_epoch == want.best_epoch, f"{name} member {k}"
        assert fit.result.val_metric == pytest.approx(want.val_metric, abs=1e-3), f"{name} member {k}"
        np.testing.assert_allclose(predict_proba(fit.result.model, test.inputs), predict_proba(want.model, test.inputs),
                                   atol=2e-3, err_msg=f"{name} member {k}")


@gpu
@needs_cuda
def test_a_jobs_2_run_on_the_gpu_trains_its_cells_in_cuda_workers_and_equals_jobs_1(tmp_path, synthetic_bundle, monkeypatch):
    """`--jobs 2 --device cuda`: two spawned workers train the cells on the GPU (pool_jobs) and give
    the records a one-process run gives: the cell's seeds, not the process, fix its numbers."""
    from fusebench.cli import main
    from fusebench.results.records import load_records

    data, cfg = synthetic_bundle
    monkeypatch.setenv("FUSEBENCH_CONFIG_DIR", str(cfg))
    runs = {}
    for jobs in ("1", "2"):
        out = tmp_path / f"jobs{jobs}"
        args = ["run", "--datasets", "toy", "--strategies", "concat,unimodal", "--trials", "2", "--seeds", "2",
                "--data-dir", str(data), "--out", str(out), "--device", "cuda", "--jobs", jobs]
        assert main(args) == 0
        runs[jobs] = {(r.strategy, r.seed): r for r in load_records(out / "results.jsonl")}
    assert runs["1"].keys() == runs["2"].keys() and len(runs["2"]) >= 4
    for key, rec in runs["2"].items():
        assert rec.status == "ok" and "cuda" in str(rec.device)
        assert rec.main_metric == pytest.approx(runs["1"][key].main_metric, abs=1e-6)
