"""Training options usable with any strategy: modality dropout and gradient blending.

The training loop (bench.train) applies them; they are defined here, next to the strategies,
because they rely on the strategy contract (padding rows are zero, `unimodal_logits`,
`training_loss`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from fusebench.strategies.base import FusionModel


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
        p = self.modality_dropout
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p) or not 0.0 <= p < 1.0:
            raise ValueError(f"modality_dropout must be a number in [0, 1), got {p!r}")
        if not isinstance(self.gradient_blending, bool):
            raise ValueError(f"gradient_blending must be a bool, got {self.gradient_blending!r}")


def drop_modalities(inputs: Mapping[str, Tensor], p: float, generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """Zero each modality of each example with probability p, keeping at least one per example.

    Pooled inputs `[B, D]` get a zero vector; token inputs `[B, T, D]` get all-zero rows, i.e. the
    whole sequence becomes padding (see `strategies.base.padding_mask`). An example that would lose
    every modality keeps one, chosen uniformly. The draws come from `generator` (on its device, so a
    CPU generator works with CUDA inputs); with one modality or p = 0 the inputs are returned as is.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"modality dropout probability must be in [0, 1], got {p}")
    if p <= 0 or len(inputs) < 2:
        return dict(inputs)
    names = sorted(inputs)
    ref = inputs[names[0]]
    b = ref.shape[0]
    draw_device = generator.device if generator is not None else ref.device
    keep = torch.rand(b, len(names), generator=generator, device=draw_device) >= p
    pick = torch.randint(len(names), (b,), generator=generator, device=draw_device)
    none = ~keep.any(1)
    keep[none, pick[none]] = True  # restore one random modality for examples that lost all
    keep = keep.to(ref.device)
    out = {}
    for i, m in enumerate(names):
        x = inputs[m]
        mask = keep[:, i].to(x.dtype).view(b, *([1] * (x.dim() - 1)))
        out[m] = x * mask
    return out


class GradientBlender:
    """Gradient-Blending (Wang, Tran & Feiszli 2020, "What Makes Training Multi-modal
    Classification Networks Hard?", CVPR), online variant.

    loss = w_fused·L_fused + Σ_m w_m·CE(unimodal_logits[m]), where L_fused is the strategy's own
    `training_loss` when it defines one (stacking) and CE(model(inputs)) otherwise. The weights
    start uniform; `update`, called between epochs with a train and a validation batch, measures
    each head's train and validation cross-entropy and, from the second call on, sets
    w_k ∝ ΔG_k / ΔO_k² (normalised to sum to 1), with ΔG_k = drop in validation loss since the
    previous call and ΔO_k = change of the overfitting gap (validation − train loss) — i.e. the
    paper's inverse squared overfitting-to-generalisation ratio times ΔG. A head whose validation
    loss rose gets weight 0; if every head's did, the weights are kept.
    """

    def __init__(self, modalities: list[str], eps: float = 1e-6) -> None:
        if not modalities:
            raise ValueError("GradientBlender needs at least one modality")
        if "fused" in modalities:
            raise ValueError("'fused' is reserved for the fused head's weight")
        self.names = ["fused", *sorted(modalities)]
        self.eps = eps
        self.weights: dict[str, float] = {n: 1.0 / len(self.names) for n in self.names}
        self.history: list[dict[str, float]] = [dict(self.weights)]
        self._last: dict[str, tuple[float, float]] | None = None

    @staticmethod
    def _check(model: FusionModel) -> None:
        if not callable(getattr(model, "unimodal_logits", None)):
            raise ValueError(
                f"gradient blending needs per-modality branches; {type(model).__name__} has no unimodal_logits(). "
                "Use it with late strategies, early_sum, gmu, film, attention_weights, tensor_fusion, lmf, mfb, "
                "early_transformer, mult, mbt, coattention or unimodal."
            )

    def _unimodal_losses(self, model: FusionModel, inputs: Mapping[str, Tensor], labels: Tensor) -> dict[str, Tensor]:
        losses = {}
        for m, logits in model.unimodal_logits(inputs).items():
            if m not in self.weights:
                raise ValueError(f"GradientBlender was set up for {self.names[1:]}, the model returned a branch {m!r}")
            losses[m] = F.cross_entropy(logits, labels)
        return losses

    def loss(self, model: FusionModel, inputs: Mapping[str, Tensor], labels: Tensor) -> Tensor:
        """The blended training loss for one batch."""
        self._check(model)
        custom = getattr(model, "training_loss", None)
        fused = custom(inputs, labels) if custom is not None else F.cross_entropy(model(inputs), labels)
        total = self.weights["fused"] * fused
        for m, value in self._unimodal_losses(model, inputs, labels).items():
            total = total + self.weights[m] * value
        return total

    @torch.no_grad()
    def _measure(self, model: FusionModel, inputs: Mapping[str, Tensor], labels: Tensor) -> dict[str, float]:
        out = {"fused": float(F.cross_entropy(model(inputs).float(), labels))}
        out.update({m: float(v) for m, v in self._unimodal_losses(model, inputs, labels).items()})
        return out

    def update(
        self,
        model: FusionModel,
        train_batch: tuple[Mapping[str, Tensor], Tensor],
        val_batch: tuple[Mapping[str, Tensor], Tensor],
    ) -> dict[str, float]:
        """Re-estimate the weights from the change in train/val losses since the last call; returns them."""
        self._check(model)
        was_training = model.training
        model.eval()
        try:
            tr = self._measure(model, *train_batch)
            va = self._measure(model, *val_batch)
        finally:
            model.train(was_training)
        now = {n: (tr[n], va[n]) for n in self.names if n in tr and n in va}
        if self._last is not None:
            raw = {}
            for n in self.names:
                if n not in now or n not in self._last:
                    raw[n] = 0.0
                    continue
                (prev_tr, prev_va), (cur_tr, cur_va) = self._last[n], now[n]
                delta_g = max(prev_va - cur_va, 0.0)
                delta_o = (cur_va - cur_tr) - (prev_va - prev_tr)
                raw[n] = delta_g / (delta_o**2 + self.eps)
            total = sum(raw.values())
            if total > 0 and math.isfinite(total):
                self.weights = {n: r / total for n, r in raw.items()}
        self._last = now
        self.history.append(dict(self.weights))
        return dict(self.weights)
