"""Training options usable with any strategy: modality dropout and gradient blending."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from strategies.base import FusionModel


@dataclass(frozen=True)
class TrainingOptions:
    """Args:
        modality_dropout: probability of zeroing each modality of each training example (never all
            of an example's modalities). Teaches robustness to a missing modality.
        gradient_blending: weight the fused loss and per-modality losses by G-Blend's estimate.
    """

    modality_dropout: float = 0.0
    gradient_blending: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.modality_dropout < 1.0:
            raise ValueError(f"modality_dropout must be in [0, 1), got {self.modality_dropout}")


def drop_modalities(inputs: Mapping[str, Tensor], p: float, generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """Zero each modality per example with probability p (token inputs: zero rows = padding),
    keeping at least one modality per example."""
    if p <= 0 or len(inputs) < 2:
        return dict(inputs)
    names = sorted(inputs)
    ref = inputs[names[0]]
    b = ref.shape[0]
    keep = torch.rand(b, len(names), generator=generator, device=ref.device) >= p
    none = ~keep.any(1)
    if none.any():  # restore one random modality for examples that lost all
        pick = torch.randint(len(names), (b,), generator=generator, device=ref.device)
        keep[none, pick[none]] = True
    out = {}
    for i, m in enumerate(names):
        x = inputs[m]
        mask = keep[:, i].to(x.dtype).view(b, *([1] * (x.dim() - 1)))
        out[m] = x * mask
    return out


class GradientBlender:
    """Gradient-Blending (Wang, Tran & Feiszli 2020, "What Makes Training Multi-modal Classification
    Networks Hard?", CVPR): loss = w_fused·CE(fused) + Σ_m w_m·CE(unimodal_m), with weights
    re-estimated between epochs from each head's overfitting-to-generalisation ratio:
    w ∝ ΔG / ΔO², where ΔG is the drop in validation loss and ΔO the change in the
    train–validation loss gap since the previous estimate.
    """

    def __init__(self, modalities: list[str]) -> None:
        self.names = ["fused", *sorted(modalities)]
        self.weights = {n: 1.0 / len(self.names) for n in self.names}
        self._last: dict[str, tuple[float, float]] | None = None

    @staticmethod
    def _check(model: FusionModel) -> None:
        if not hasattr(model, "unimodal_logits"):
            raise ValueError(
                f"gradient blending needs per-modality branches; {type(model).__name__} has no unimodal_logits(). "
                "Use it with late strategies, gmu or attention_weights."
            )

    def _losses(self, model: FusionModel, inputs: Mapping[str, Tensor], labels: Tensor) -> dict[str, Tensor]:
        losses = {"fused": F.cross_entropy(model(inputs), labels)}
        for m, logits in model.unimodal_logits(inputs).items():  # type: ignore[attr-defined]
            losses[m] = F.cross_entropy(logits, labels)
        return losses

    def loss(self, model: FusionModel, inputs: Mapping[str, Tensor], labels: Tensor) -> Tensor:
        self._check(model)
        return sum(self.weights[n] * v for n, v in self._losses(model, inputs, labels).items())

    @torch.no_grad()
    def update(self, model: FusionModel, train: tuple[Mapping[str, Tensor], Tensor], val: tuple[Mapping[str, Tensor], Tensor]) -> None:
        self._check(model)
        was_training = model.training
        model.eval()
        tr = {k: float(v) for k, v in self._losses(model, *train).items()}
        va = {k: float(v) for k, v in self._losses(model, *val).items()}
        model.train(was_training)
        if self._last is not None:
            raw = {}
            for n in self.names:
                prev_tr, prev_va = self._last[n]
                delta_g = max(prev_va - va[n], 0.0)
                delta_o = (va[n] - tr[n]) - (prev_va - prev_tr)
                raw[n] = delta_g / (delta_o**2 + 1e-6)
            total = sum(raw.values())
            if total > 0:
                self.weights = {n: r / total for n, r in raw.items()}
        self._last = {n: (tr[n], va[n]) for n in self.names}
