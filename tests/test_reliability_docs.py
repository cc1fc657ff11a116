"""docs/reliability.md stays in step with the tests: every test it names exists."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_every_test_named_in_the_catalogue_exists() -> None:
    named = set(re.findall(r"`(test_\w+)`", (REPO / "docs" / "reliability.md").read_text()))
    assert len(named) >= 30
    defined = set()
    for path in (REPO / "tests").rglob("test_*.py"):
        defined |= set(re.findall(r"^def (test_\w+)\(", path.read_text(), flags=re.M))
    assert sorted(named - defined) == []
