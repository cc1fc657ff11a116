"""Robustness of a trained model: test metric when a modality is missing or its features are noisy.

Missing: the modality's key is absent from the inputs (strategies document how they cope).
Noise: additive Gaussian noise of standard deviation σ on every (standardised) feature, seeded.
Together they give the curves the report draws; a strategy that cannot run without a modality
gets `None` for that point instead of failing the cell.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from fusebench.core import metrics as metric_lib
from fusebench.strategies.base import FusionModel, padding_mask
from fusebench.training.loop import predict_proba

NOISE_LEVELS = (0.5, 1.0, 2.0)


def _noisy(inputs: Mapping[str, Tensor], sigma: float, seed: int) -> dict[str, Tensor]:
    g = torch.Generator(device="cpu").manual_seed(seed)
    out = {}
    for k, v in inputs.items():
        noise = (torch.randn(v.shape, generator=g) * sigma).to(v.device, v.dtype)
        if v.dim() == 3:  # keep padding rows exactly zero so masks stay right
            noise = noise * padding_mask(v).unsqueeze(-1).to(v.dtype)
        out[k] = v + noise
    return out


def evaluate_robustness(
    model: FusionModel, inputs: Mapping[str, Tensor], labels: np.ndarray, metric: str, seed: int, batch_size: int,
    noise: bool = True,
) -> dict[str, float | None]:
    """`{"missing:<view>": score, "noise:<sigma>": score}` on the test split. `noise=False` leaves the
    noise points out (a fine-tuned model's inputs are token ids and pixels, not standardised features)."""
    out: dict[str, float | None] = {}
    fn = metric_lib.METRICS.get(metric)
    if len(inputs) > 1:
        for view in sorted(inputs):
            kept = {k: v for k, v in inputs.items() if k != view}
            try:
                out[f"missing:{view}"] = fn(labels, predict_proba(model, kept, batch_size))
            except (ValueError, KeyError, RuntimeError):
                out[f"missing:{view}"] = None
    for sigma in NOISE_LEVELS if noise else ():
        out[f"noise:{sigma}"] = fn(labels, predict_proba(model, _noisy(inputs, sigma, seed), batch_size))
    return out
