"""Which cells a task has: strategy selections (`concat`, `unimodal:VIEW`, `concat:A+B`, fine-tuning
modes) expanded against the task's views, and the views those cells read (only these are encoded).

Planning only: nothing here trains, searches or touches data (bench/run/cell.py runs a cell).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from fusebench.core.encmode import FROZEN, EncoderMode
from fusebench.core.errors import UsageError
from fusebench.strategies.base import STRATEGIES, StrategyInfo


@dataclass(frozen=True)
class Cell:
    dataset: str
    strategy: str  # record name: the registry name, or "unimodal:<view>"
    info: StrategyInfo
    views: tuple[str, ...]
    mode: EncoderMode = FROZEN  # encoder training mode; a fine-tuned cell's strategy ends in "+ft:<mode>"


def parse_selection(name: str) -> tuple[str, tuple[str, ...] | None]:
    """`unimodal:text_lexical` → ("unimodal", ("text_lexical",)); `concat:image+text` → ("concat", ("image",
    "text")); a bare name → (name, None), meaning every view of the task."""
    base, sep, rest = name.partition(":")
    if not sep:
        return name, None
    views = tuple(v.strip() for v in rest.replace(",", "+").split("+") if v.strip())
    if not views:
        raise UsageError(f"strategy {name!r}: name the views after ':' (e.g. unimodal:text or concat:image+text)")
    return base, views


RERANK_FAMILIES = ("early", "mid", "late")  # fusion strategies that score an image–caption pair


def can_rerank(info: StrategyInfo) -> bool:
    """Whether a strategy re-ranks a retrieval task's candidates: a trainable fusion of two views that scores a pair."""
    return info.family in RERANK_FAMILIES and info.trainable and not info.per_modality and info.min_modalities <= 2


def selected_strategy(name: str) -> StrategyInfo:
    """The registered strategy a selection names. A row's name that is not a selection (`rerank:concat`,
    `dual_encoder`, `concat+ft:full`) gets an error saying what to select instead, not a name that merely
    looks alike ("unknown strategy 'rerank'. Did you mean 'random'?")."""
    base, sep, rest = name.strip().partition(":")
    if base in STRATEGIES:
        return STRATEGIES.get(base)
    if base == "rerank":
        plain = rest.strip().partition(":")[0]
        info = STRATEGIES.get(plain) if plain in STRATEGIES else None
        if info is not None and can_rerank(info):
            what = f"the re-ranker by its plain name ({plain!r})"
        else:
            what = (f"re-rankers by their plain names; {plain!r} is not one (a trainable fusion strategy, "
                    "`fusebench list strategies`)" if plain else "re-rankers by their plain names (e.g. concat)")
        raise UsageError(f"strategy {name!r}: select {what}. On a retrieval task every trainable pair-scoring fusion "
                         "strategy selected re-ranks the dual encoder's candidates, and its rows are named 'rerank:<name>'")
    if base == "dual_encoder":
        raise UsageError(f"strategy {name!r}: the dual encoder is not selected; it runs first on every retrieval task, "
                         "and each selected fusion strategy re-ranks its candidates")
    plain, ft, mode = base.partition("+ft")
    if ft and plain in STRATEGIES:
        raise UsageError(f"strategy {name!r}: a fine-tuned row is not selected by its name; select {plain!r} with "
                         f"--encoders {(mode + sep + rest).lstrip(':') or 'MODE'} (suite setting `encoders`)")
    return STRATEGIES.get(base)


def check_selection(name: str, views: Iterable[str]) -> StrategyInfo:
    """A strategy selection of a run whose datasets have `views`: its name (`selected_strategy`) and the views
    it names after ':' must exist; 'all' stands alone. UsageError says what to give instead."""
    if name.strip() == "all":
        raise UsageError("strategy 'all' selects every strategy and stands alone: give 'all' only, or list names without it")
    _base, chosen = parse_selection(name)
    info = selected_strategy(name)
    have = set(views)
    missing = sorted(set(chosen or ()) - have)
    if missing:
        raise UsageError(f"strategy {name!r}: no dataset of this run has view(s) {missing}; views here: {sorted(have)}")
    return info


def expand_cells(dataset: str, views: list[str], names: list[str], modes: tuple[EncoderMode, ...] = (FROZEN,),
                 tunable: frozenset[str] = frozenset()) -> list[Cell]:
    """Strategy selections → cells for a task. Per-modality strategies get one cell per view (or per
    selected view: `unimodal:VIEW`, `unimodal:A+B`); fusion strategies fuse every view, or the selected
    ones (`concat:A+B`, recorded under that name), and are skipped when the task has fewer than
    `min_modalities` of them. Selected views the task lacks are skipped for this task. Each mode of
    `modes` other than frozen adds `<strategy>+ft:<mode>` cells for trainable strategies reading at
    least one view of `tunable` (views whose encoder can be fine-tuned); the others would repeat
    their frozen row."""
    cells = []
    for name in names:
        base, chosen = parse_selection(name)
        info = selected_strategy(name)
        use = list(views) if chosen is None else [v for v in chosen if v in views]
        if chosen is not None and len(use) < len(chosen) and not info.per_modality:
            continue  # the fusion asked for a view this task does not have
        if info.per_modality:
            cells += [Cell(dataset, f"{base}:{v}", info, (v,)) for v in use]
        elif len(use) >= info.min_modalities:
            record = base if sorted(use) == sorted(views) else f"{base}:{'+'.join(sorted(use))}"
            cells.append(Cell(dataset, record, info, tuple(sorted(use))))
    # two selections can name one cell (`unimodal,unimodal:text`; `concat,concat:a+b` on a task of views a, b):
    # it runs once, as the first selection named it
    first: dict[str, Cell] = {}
    for cell in cells:
        first.setdefault(cell.strategy, cell)
    cells = list(first.values())
    tuned = [dataclasses.replace(c, strategy=c.strategy + m.suffix(), mode=m) for m in modes if not m.frozen
             for c in cells if c.info.trainable and set(c.views) & tunable]
    return [c for c in cells if FROZEN in modes] + tuned


class _Viewed(Protocol):
    @property
    def views(self) -> tuple[str, ...]: ...


def needed_views(cells: Iterable[_Viewed]) -> set[str]:
    """The views the cells read: only these are encoded."""
    return {v for c in cells for v in c.views}
