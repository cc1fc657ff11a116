"""docs/strategies.md keeps one row per registered strategy, with a paper and a reference column."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fusebench.strategies import STRATEGIES

DOC = Path(__file__).resolve().parents[1] / "docs" / "strategies.md"


def _rows() -> dict[str, list[str]]:
    rows = {}
    for line in DOC.read_text(encoding="utf-8").splitlines():
        m = re.match(r"\|\s*`([a-z0-9_]+)`\s*\|", line)
        if m:
            rows[m.group(1)] = [c.strip() for c in line.strip().strip("|").split("|")]
    return rows


@pytest.mark.parametrize("name", STRATEGIES.names())
def test_every_registered_strategy_has_a_fidelity_row(name):
    rows = _rows()
    assert name in rows, f"docs/strategies.md has no row for `{name}`"
    cells = rows[name]
    assert len(cells) == 6, f"row `{name}` should have 6 columns, has {len(cells)}"
    family, paper, ref, matches = cells[1], cells[2], cells[3], cells[4]
    assert family.startswith(STRATEGIES.get(name).family), f"row `{name}` names family {family!r}"
    assert re.search(r"\d{4}", paper), f"row `{name}` cites no paper year"
    assert ref and matches, f"row `{name}` leaves the reference or what matches empty"


def test_no_row_for_an_unregistered_strategy():
    stale = sorted(set(_rows()) - set(STRATEGIES.names()))
    assert not stale, f"docs/strategies.md describes strategies that are not registered: {stale}"
