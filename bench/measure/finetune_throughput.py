"""Throughput of a fine-tuned model: the whole model (encoder towers + fusion) on synthetic raw inputs.

`fusebench throughput --encoders last:2 ...` builds, per strategy, the real pretrained text
(all-MiniLM-L6-v2) and image (EfficientNet-Lite0) towers in the given mode under the strategy, feeds
random token ids (`--max-length` tokens, all real) and random 160 px pixels, and times:
- training: forward + backward + AdamW step per batch (encoder and head learning rates as in a run),
  bf16 autocast on CUDA (off on CPU);
- inference: forward in eval mode under inference_mode;
- the split: the towers' forward (encoder) and the strategy's forward (fusion) timed apart, with
  CUDA events on GPU and `perf_counter` after a synchronisation on CPU; backward + step is a third part.
Peak memory is the region's (bench.measure.timing.PeakMemory): CUDA max allocated on GPU, the process's
peak RSS over the region (VmHWM, reset at its start) on CPU. Median over the timed repetitions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fusebench.core.encmode import EncoderMode
from fusebench.features.encoders import build_encoder
from fusebench.measure.timing import PeakMemory, device_name, synchronize
from fusebench.strategies import STRATEGIES, FusionSpec
from fusebench.training.finetune.model import FineTuneModel
from fusebench.training.finetune.towers import ImageTower, TextTower, Tower

IMAGE_SIDE, TEXT_TOKENS, GRID = 160, 32, 3


@dataclass(frozen=True)
class FineTuneThroughput:
    strategy: str
    mode: str
    batch_size: int
    train_samples_per_s: float
    infer_samples_per_s: float
    train_ms: dict[str, float]  # median per batch: encoder_forward, fusion_forward, backward_step (loss + backward + step)
    infer_ms: dict[str, float]  # median per batch: encoder_forward, fusion_forward
    encoder_share_train: float  # encoder forward / (encoder + fusion forward) while training
    peak_mem_mb: float
    peak_mem_kind: str
    trainable_params: int
    encoder_trainable_params: int
    device: str
    timer: str
    amp_bf16: bool
    error: str | None = None


class _Clock:
    """Interval timer: CUDA events on GPU, perf_counter after a synchronisation on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.marks: list[Any] = []

    def mark(self) -> None:
        if self.device.type == "cuda":
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self.marks.append(ev)
        else:
            synchronize(self.device)
            import time

            self.marks.append(time.perf_counter())

    def intervals_ms(self) -> list[float]:
        if self.device.type == "cuda":
            synchronize(self.device)
            return [a.elapsed_time(b) for a, b in zip(self.marks, self.marks[1:])]
        return [(b - a) * 1000 for a, b in zip(self.marks, self.marks[1:])]


def _towers(mode: EncoderMode, device: torch.device, max_length: int) -> tuple[dict[str, Tower], int]:
    """The real pretrained towers in `mode`, and the tokenizer's vocabulary size."""
    text: Any = build_encoder("minilm", {"max_length": max_length, "tokens": TEXT_TOKENS}, device)
    image: Any = build_encoder("efficientnet_lite0", {"token_grid": GRID}, device)
    return {"text": TextTower(text.model, TEXT_TOKENS).apply_mode(mode),
            "image": ImageTower(image.model, GRID).apply_mode(mode)}, int(text.tokenizer.vocab_size)


def _inputs(n: int, max_length: int, vocab: int, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(min(1000, vocab - 1), vocab, (n, max_length), generator=g)  # past the special tokens
    text = torch.stack([ids, torch.ones_like(ids)], 1)
    pixels = torch.randint(0, 256, (n, 3, IMAGE_SIDE, IMAGE_SIDE), generator=g, dtype=torch.uint8)
    return {"image": pixels.to(device), "text": text.to(device)}


def _timed(step: Callable[[_Clock], object], device: torch.device, warmup: int, repetitions: int) -> list[list[float]]:
    """Run `step` `warmup + repetitions` times, each with a fresh clock; the intervals (ms) of the timed runs."""
    out = []
    for i in range(warmup + repetitions):
        clock = _Clock(device)
        step(clock)
        if i >= warmup:
            out.append(clock.intervals_ms())
    return out


def measure_finetune(name: str, mode: EncoderMode, batch_size: int, device: torch.device, *, max_length: int = 32,
                     repetitions: int = 10, warmup: int = 2, encoder_lr: float = 2e-5) -> FineTuneThroughput:
    """Train and inference throughput of strategy `name` on fine-tuned MiniLM + EfficientNet-Lite0 towers."""
    info = STRATEGIES.get(name)
    towers, vocab = _towers(mode, device, max_length)
    tokens = {"text": TEXT_TOKENS, "image": GRID * GRID}
    spec = FusionSpec({"text": 384, "image": 1280}, tokens, 2)
    torch.manual_seed(0)
    model = FineTuneModel(info.build(spec), towers, encoder_lr).to(device)
    hp = model.params
    opt = torch.optim.AdamW(model.param_groups(hp.lr, hp.weight_decay), lr=hp.lr)
    x = _inputs(batch_size, max_length, vocab, device)
    y = (torch.arange(batch_size, device=device) % 2)
    amp = device.type == "cuda"

    def forward(clock: _Clock) -> torch.Tensor:
        """The whole model's forward, marked before the towers, between towers and fusion, and after."""
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            clock.mark()
            feats = model.features(x)
            clock.mark()
            logits = model.fusion(feats)
            clock.mark()
        return logits

    def train_step(clock: _Clock) -> None:
        loss = F.cross_entropy(forward(clock).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        clock.mark()

    with PeakMemory(device) as mem:
        model.train()
        train = _timed(train_step, device, warmup, repetitions)
        model.eval()
        with torch.inference_mode():
            infer = _timed(forward, device, warmup, repetitions)
    t, v = np.median(np.array(train), 0), np.median(np.array(infer), 0)
    return FineTuneThroughput(
        strategy=f"{name}{mode.suffix()}", mode=str(mode), batch_size=batch_size,
        train_samples_per_s=float(batch_size / (t.sum() / 1000)), infer_samples_per_s=float(batch_size / (v.sum() / 1000)),
        train_ms={"encoder_forward": float(t[0]), "fusion_forward": float(t[1]), "backward_step": float(t[2])},
        infer_ms={"encoder_forward": float(v[0]), "fusion_forward": float(v[1])},
        encoder_share_train=float(t[0] / max(t[0] + t[1], 1e-12)),
        peak_mem_mb=float(mem.peak_mb), peak_mem_kind=mem.kind,
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        encoder_trainable_params=sum(p.numel() for p in model.encoder_parameters()),
        device=device_name(device), timer="cuda_events" if device.type == "cuda" else "perf_counter", amp_bf16=amp,
    )


def format_rows(rows: list[FineTuneThroughput]) -> str:
    head = (f"{'strategy':28s} {'batch':>5s} {'train/s':>9s} {'infer/s':>9s} {'enc fwd ms':>10s} {'fus fwd ms':>10s} "
            f"{'bwd+step ms':>11s} {'enc share':>9s} {'peak MB':>9s}")
    lines = [head]
    for r in rows:
        if r.error:
            lines.append(f"{r.strategy:28s} {r.batch_size:5d} error: {r.error}")
            continue
        lines.append(f"{r.strategy:28s} {r.batch_size:5d} {r.train_samples_per_s:9.1f} {r.infer_samples_per_s:9.1f} "
                     f"{r.train_ms['encoder_forward']:10.1f} {r.train_ms['fusion_forward']:10.2f} "
                     f"{r.train_ms['backward_step']:11.1f} {r.encoder_share_train:9.3f} {r.peak_mem_mb:9.0f}")
    return "\n".join(lines)
