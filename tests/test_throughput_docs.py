"""docs/throughput.md's CPU inference table describes the strategies the code builds: every registered
strategy has a row, and each row's parameter count is the one `fusebench throughput` would measure now
at the default synthetic shapes. Stop 30 found the table of 2026-11-24 eight strategies out of date
(`lmf` 467,982 parameters in the table, 46,078 built) and four missing; this test fails on that table."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from fusebench.measure.throughput import DEFAULT_SHAPES, expand_names
from fusebench.strategies import STRATEGIES

DOC = Path(__file__).resolve().parents[1] / "docs" / "throughput.md"
SECTION = "## Figures measured here (CPU only)"


def _table_params() -> dict[str, int]:
    """`strategy` → params of the inference table (its 10-column rows) in the CPU figures section."""
    text = DOC.read_text(encoding="utf-8")
    body = text[text.index(SECTION):]
    body = body[:body.index("\n## ", len(SECTION))]
    rows = {}
    for line in body.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 10 and (m := re.fullmatch(r"`([^`]+)`", cells[0])):
            rows[m.group(1)] = int(cells[8].replace(",", ""))
    return rows


def _built_params() -> dict[str, int]:
    out = {}
    for row, base, views in expand_names(STRATEGIES.names(), DEFAULT_SHAPES.tokens.modalities):
        info = STRATEGIES.get(base)
        torch.manual_seed(0)
        model = info.build(DEFAULT_SHAPES.spec(info.input_kind).restrict(views))
        out[row] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return out


def test_the_cpu_table_has_every_strategy_with_its_current_parameter_count() -> None:
    table, built = _table_params(), _built_params()
    assert set(table) == set(built), f"rows missing: {sorted(set(built) - set(table))}, extra: {sorted(set(table) - set(built))}"
    stale = {s: (table[s], built[s]) for s in built if table[s] != built[s]}
    assert not stale, f"(table, built) params differ, re-measure docs/throughput.md: {stale}"
