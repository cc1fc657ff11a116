"""Encoder training modes: `frozen` (cached features, the default), `last:N`, `full`.

A mode says which encoder parameters train together with the fusion model (bench/training/
finetune/). `last:N` unfreezes the last N transformer layers (text) or EfficientNet blocks (image)
plus the final norm/head layers; `full` every encoder parameter. The mode enters record names
(`concat+ft:last:2`), records (`encoder_mode`) and the run's config hash, so frozen and fine-tuned
rows of one strategy are distinct rows that are never pooled.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from fusebench.core.space import FloatRange

ModeKind = Literal["frozen", "last", "full"]
_PATTERN = re.compile(r"^(frozen|full|last:(\d+))$")


@dataclass(frozen=True)
class EncoderMode:
    """One encoder training mode; `str(mode)` is its canonical spelling (`frozen`, `last:2`, `full`)."""

    kind: ModeKind = "frozen"
    n: int = 0  # blocks/layers unfrozen from the top (kind == "last")

    def __post_init__(self) -> None:
        if self.kind == "last" and self.n < 1:
            raise ValueError(f"encoder mode last:N needs N >= 1, got last:{self.n}")
        if self.kind != "last" and self.n:
            raise ValueError(f"encoder mode {self.kind!r} takes no block count")

    @classmethod
    def parse(cls, text: str) -> EncoderMode:
        """`frozen`, `full` or `last:N` (N >= 1); anything else is a ValueError that lists the forms."""
        m = _PATTERN.match(str(text).strip())
        if not m:
            raise ValueError(f"encoder mode {text!r} is not one of: frozen, last:N (N >= 1, e.g. last:2), full")
        if m.group(2) is not None:
            return cls("last", int(m.group(2)))
        return cls(m.group(1))  # type: ignore[arg-type]

    @property
    def frozen(self) -> bool:
        return self.kind == "frozen"

    def __str__(self) -> str:
        return f"last:{self.n}" if self.kind == "last" else self.kind

    def suffix(self) -> str:
        """What a fine-tuned cell appends to its strategy name: `+ft:last:2`; '' when frozen."""
        return "" if self.frozen else f"+ft:{self}"


FROZEN = EncoderMode()


def split_mode(strategy: str) -> tuple[str, str]:
    """A record's strategy name → (name without the mode, mode): `concat+ft:last:2` → (`concat`, `last:2`)."""
    base, sep, mode = strategy.partition("+ft:")
    return (base, mode) if sep else (strategy, "frozen")


# The encoder learning rate is searched in fine-tuning modes only (frozen cells have no encoder to
# train, so their search space is unchanged): log-uniform over the usual range for fine-tuning
# pretrained transformers (BERT's recipe tries 2e-5..5e-5), which also covers EfficientNet's
# unfrozen blocks at the low end of their usual rates. Trials, best params and records carry it
# under this name, next to the strategy's own params.
ENCODER_LR_PARAM = "encoder_lr"
ENCODER_LR_SPACE = FloatRange(1e-5, 1e-4, log=True)


@dataclass(frozen=True)
class FineTuneSettings:
    """The fixed (not searched) part of fine-tuning, a suite setting (`finetune:`) shared by every cell.

    The head's `lr` and the encoder's (`ENCODER_LR_SPACE`) are searched; `encoder_lr` is the encoder's
    rate only where nothing was searched (`fusebench throughput`, a study none of whose trials
    completed, a study written before the encoder rate was searched)."""

    encoder_lr: float = 2e-5
    accumulate: int = 1  # optimiser step every `accumulate` micro-batches of batch_size/accumulate rows
    checkpointing: bool = False  # gradient checkpointing of the trainable encoder blocks (memory for time)
    max_length: int | None = None  # text: tokens per input (None: the view's max_length option)
    eval_batch_size: int = 64  # evaluation/inference batch (encoders run inside it)
    stats_rows: int = 256  # train rows through the pretrained encoder to fix the standardisation
    # last:N towers: compute the frozen blocks' output once per split and train from it (same numbers,
    # a fraction of the compute; the record's train/inference samples/s then exclude those blocks)
    cache_prefix: bool = False

    def __post_init__(self) -> None:
        if not self.encoder_lr > 0:
            raise ValueError(f"finetune.encoder_lr must be > 0, got {self.encoder_lr}")
        if self.accumulate < 1 or self.eval_batch_size < 1 or self.stats_rows < 2:
            raise ValueError("finetune.accumulate >= 1, eval_batch_size >= 1 and stats_rows >= 2 required")
        if self.max_length is not None and self.max_length < 2:
            raise ValueError(f"finetune.max_length must be >= 2, got {self.max_length}")
