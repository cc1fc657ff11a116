"""A fusion strategy on top of trainable encoder towers: one module trained end to end.

`FineTuneModel(fusion, towers, encoder_lr)` takes the batch the fine-tuning path carries — raw
preprocessed inputs for the views with a tower (token ids + masks, pixels), cached features for the
others — runs the towers and hands the unchanged strategy the `dict[str, Tensor]` (sorted keys,
pooled `[B, D]` or tokens `[B, T, D]` per its `input_kind`) that it gets on the frozen path, now
with gradients. It looks like a `FusionModel` to the training loop (`params`, `fit_prior`,
`training_loss`, `spec`), and adds `param_groups` so that the head and the encoders get separate
learning rates. Its `state_dict` holds the encoder weights, so best-state restore covers them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from fusebench.strategies.base import FusionModel
from fusebench.training.finetune.towers import Tower


class FineTuneModel(nn.Module):
    """`fusion` (any registered strategy) fed by `towers` (view → Tower) and cached features."""

    def __init__(self, fusion: FusionModel, towers: Mapping[str, Tower], encoder_lr: float) -> None:
        super().__init__()
        self.fusion = fusion
        self.towers = nn.ModuleDict(dict(towers))
        self.encoder_lr = encoder_lr

    # what the training loop, timing and robustness read from a FusionModel
    @property
    def params(self) -> Any:
        return self.fusion.params

    @property
    def spec(self) -> Any:
        return self.fusion.spec

    @property
    def input_kind(self) -> str:
        return self.fusion.input_kind

    def fit_prior(self, labels: Tensor) -> None:
        self.fusion.fit_prior(labels)

    def features(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The strategy's inputs: tower outputs for raw views, cached features as they are."""
        out = {}
        for view in sorted(inputs):
            x = inputs[view]
            if view in self.towers:
                pooled, tokens = self.towers[view](x)
                x = pooled if self.fusion.input_kind == "pooled" else tokens
            out[view] = x
        return out

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        return self.fusion(self.features(inputs))

    def training_loss(self, inputs: Mapping[str, Tensor], labels: Tensor) -> Tensor:
        """The strategy's own training loss where it has one (stacking, auxiliary heads), else CE."""
        feats = self.features(inputs)
        custom = getattr(self.fusion, "training_loss", None)
        return custom(feats, labels) if custom is not None else F.cross_entropy(self.fusion(feats), labels)

    def encoder_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.towers.parameters() if p.requires_grad]

    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """AdamW groups: the head at the searched `lr`, the unfrozen encoder weights at `encoder_lr`."""
        head = [p for p in self.fusion.parameters() if p.requires_grad]
        groups = [{"params": head, "lr": lr, "weight_decay": weight_decay}] if head else []
        enc = self.encoder_parameters()
        if enc:
            groups.append({"params": enc, "lr": self.encoder_lr, "weight_decay": weight_decay})
        return groups
