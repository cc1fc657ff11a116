"""What a cell needs to train in a given encoder mode: its batches and how to build its model.

`attach_raw` adds the raw inputs of the trainable views (bench/training/finetune/inputs.py) to a
task's data once, for the cells that fine-tune. `CellSetup` then gives a cell its batches (raw
tensors for the views with a tower, cached features for every other view) and wraps each freshly
built strategy in a `FineTuneModel` whose towers are copies of the pretrained encoders with the
mode applied. In `frozen` mode, or for a cell none of whose views can be fine-tuned, it is exactly
the cached-feature path: the strategy itself, the features, the suite's TrainConfig.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from fusebench.core.encmode import ENCODER_LR_PARAM, EncoderMode, FineTuneSettings
from fusebench.data.builders import SPLITS, TaskTables
from fusebench.features.extract import TaskData
from fusebench.strategies.base import FusionModel
from fusebench.training.finetune.inputs import preprocess, pretrained, tower_kind
from fusebench.training.finetune.model import FineTuneModel
from fusebench.training.finetune.towers import ImageTower, TextTower, Tower
from fusebench.training.loop import Batch, TrainConfig


@dataclass(frozen=True)
class FineTuneData(TaskData):
    """TaskData plus the raw inputs of its trainable views: split → view → tensor."""

    raw: dict[str, dict[str, Tensor]] = field(default_factory=dict)


def attach_raw(data: TaskData, tables: TaskTables, views: Iterable[str], settings: FineTuneSettings,
               device: torch.device) -> TaskData:
    """`data` with raw inputs for those of `views` whose encoder can be fine-tuned (else unchanged)."""
    trainable = sorted(v for v in set(views) if tower_kind(data.config.views[v].encoder))
    if not trainable:
        return data
    raw: dict[str, dict[str, Tensor]] = {s: {} for s in SPLITS}
    for v in trainable:
        view = data.config.views[v]
        kind = tower_kind(view.encoder)
        enc = pretrained(view, device)
        for split in SPLITS:
            raw[split][v] = preprocess(kind, enc, list(tables.splits[split][view.column]), settings.max_length)  # type: ignore[arg-type]
    base = {f.name: getattr(data, f.name) for f in dataclasses.fields(TaskData)}
    return FineTuneData(**base, raw=raw)


_STATS: dict[tuple, dict[str, Tensor]] = {}  # (fingerprint, view, settings, device) → standardisation buffers


def build_tower(data: TaskData, view: str, mode: EncoderMode, settings: FineTuneSettings, device: torch.device) -> Tower:
    """A fresh copy of the view's pretrained encoder as a tower in `mode`, standardised with the
    pretrained encoder's statistics on the first `stats_rows` train rows (computed once per process)."""
    cfg = data.config.views[view]
    enc = pretrained(cfg, device)
    model = copy.deepcopy(enc.model)
    tower: Tower = TextTower(model, enc.options.tokens) if tower_kind(cfg.encoder) == "text" else \
        ImageTower(model, enc.options.token_grid)
    tower.checkpointing = settings.checkpointing
    tower.apply_mode(mode)
    tower = tower.to(device)
    key = (data.fingerprint, view, settings, str(device))
    if key not in _STATS:
        rows = data.raw["train"][view]  # type: ignore[attr-defined]
        tower.fit_standardisation(rows[: settings.stats_rows].to(device), settings.eval_batch_size)
        _STATS[key] = {k: v.detach().clone() for k, v in tower.state_dict().items() if k.startswith(("pooled_", "tok_"))}
    tower.load_state_dict(_STATS[key], strict=False)
    if settings.cache_prefix:
        tower.start = tower.frozen_prefix()  # its inputs: CellSetup.batch's cached prefix
    return tower


_PREFIX: dict[tuple, Tensor] = {}  # (fingerprint, view, mode, split, device) → frozen-prefix activations


def prefix_inputs(data: TaskData, view: str, split: str, mode: EncoderMode, settings: FineTuneSettings,
                  device: torch.device) -> Tensor | None:
    """The activations entering the first trainable block of a tower, for every row of the
    split (computed once per process), or None when there is nothing to cache."""
    if not settings.cache_prefix:
        return None
    key = (data.fingerprint, view, str(mode), split, str(device))
    if key not in _PREFIX:
        enc = pretrained(data.config.views[view], device)
        tower = TextTower(enc.model, 1) if tower_kind(data.config.views[view].encoder) == "text" else ImageTower(enc.model, 1)
        tower.mode = mode
        upto = tower.frozen_prefix()
        if upto == 0:
            return None
        pixels = data.raw[split][view]  # type: ignore[attr-defined]
        step = settings.eval_batch_size
        _PREFIX[key] = torch.cat([tower.prefix(pixels[i:i + step].to(device), upto) for i in range(0, len(pixels), step)])
        tower.apply_mode(EncoderMode())  # leave the shared pretrained module as it was: frozen
    return _PREFIX[key]


@dataclass(frozen=True)
class CellSetup:
    """A cell's batches and model builder in its encoder mode (see the module docstring)."""

    data: TaskData
    views: tuple[str, ...]
    input_kind: str
    mode: EncoderMode
    settings: FineTuneSettings
    device: torch.device

    @property
    def tower_views(self) -> list[str]:
        """The cell's views that train an encoder (none in frozen mode)."""
        raw = getattr(self.data, "raw", {}).get("train", {})
        return [] if self.mode.frozen else [v for v in self.views if v in raw]

    @property
    def fine_tuned(self) -> bool:
        return bool(self.tower_views)

    def batch(self, split: str) -> Batch:
        s = self.data.splits[split]
        inputs = s.inputs(self.input_kind, list(self.views))
        for v in self.tower_views:
            cached = prefix_inputs(self.data, v, split, self.mode, self.settings, self.device)
            inputs[v] = self.data.raw[split][v] if cached is None else cached  # type: ignore[attr-defined]
        return Batch({k: v.to(self.device) for k, v in inputs.items()}, s.labels.to(self.device))

    def wrap(self, fusion: FusionModel, encoder_lr: float | None = None) -> nn.Module:
        """The strategy as trained in this mode: itself when frozen, else on top of fresh towers whose
        weights train at `encoder_lr` (the searched rate; None: the suite's `finetune.encoder_lr`)."""
        if not self.fine_tuned:
            return fusion
        towers = {v: build_tower(self.data, v, self.mode, self.settings, self.device) for v in self.tower_views}
        lr = self.settings.encoder_lr if encoder_lr is None else encoder_lr
        return FineTuneModel(fusion, towers, lr).to(self.device)

    def split_params(self, values: dict | None) -> tuple[dict | None, float | None]:
        """A study's best params → (the strategy's, the encoder rate): the searched rate, the suite's
        `finetune.encoder_lr` when they carry none, None when frozen."""
        if values is None or ENCODER_LR_PARAM not in values:
            return values, self.settings.encoder_lr if self.fine_tuned else None
        rest = {k: v for k, v in values.items() if k != ENCODER_LR_PARAM}
        return rest, float(values[ENCODER_LR_PARAM]) if self.fine_tuned else None

    def train_config(self, base: TrainConfig) -> TrainConfig:
        """The suite's TrainConfig, with the fine-tuning batch settings when the cell fine-tunes."""
        if not self.fine_tuned:
            return base
        return dataclasses.replace(base, eval_batch_size=self.settings.eval_batch_size, accumulate=self.settings.accumulate)
