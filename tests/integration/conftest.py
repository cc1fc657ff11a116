"""A real miniature run shared by the integration tests that only read its outputs."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> tuple[Path, int]:
    """`fusebench run --suite tiny` on the real bundle: (run dir, exit code)."""
    from fusebench.cli import main

    out = tmp_path_factory.mktemp("tiny-run") / "run"
    code = main(["run", "--suite", "tiny", "--out", str(out), "--data-dir", str(data_root)])
    return out, code
