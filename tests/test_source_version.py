"""source_version: the code version in data fingerprints and feature-cache keys changes with the code
that runs, not with its comments, docstrings or layout (a reworded docstring must not cost hours of
re-encoding), and reads the same on every supported Python."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fusebench.core.filehash import source_version

BASE = '''"""Module docstring."""
import math


def area(r):
    """Area of a circle."""
    return math.pi * r ** 2


class Shape:
    "class docstring"
    sides = 0

    def name(self):
        return f"{self.sides + 1} sides"


pick = lambda: "chosen"
'''


def _version(tmp_path: Path, text: str, name: str = "mod.py") -> str:
    folder = tmp_path / f"v{abs(hash((text, name)))}"
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(text)
    return source_version(folder)


@pytest.mark.parametrize(
    "edited",
    [
        BASE.replace('"""Area of a circle."""', '"""The area of a circle of radius r."""'),
        BASE.replace('"""Module docstring."""', '"""A different module docstring,\n\nover lines."""'),
        BASE.replace('"class docstring"', "'reworded'"),
        BASE.replace("import math\n", "import math  # pi\n# a comment line\n\n\n"),
        BASE.replace("math.pi * r ** 2", "math.pi  *  r**2"),
        BASE.replace("    return math.pi", '    """Second string statement."""\n    return math.pi'),
    ],
    ids=["docstring", "module-docstring", "class-docstring", "comments-blank-lines", "spacing", "bare-string"],
)
def test_comments_docstrings_and_layout_keep_the_version(tmp_path, edited):
    assert edited != BASE
    assert _version(tmp_path, edited) == _version(tmp_path, BASE)


@pytest.mark.parametrize(
    "edited",
    [
        BASE.replace("r ** 2", "r ** 3"),
        BASE.replace("math.pi", "math.tau"),
        BASE.replace('f"{self.sides + 1} sides"', 'f"{self.sides} sides"'),
        BASE.replace('lambda: "chosen"', 'lambda: "other"'),
        BASE.replace("    sides = 0\n", "    sides = 0\n    corners = 0\n"),
        BASE.replace("        return f", "    return f").replace("    def name(self):\n", "    def name(self):\n        pass\n"),
    ],
    ids=["constant", "name", "f-string", "lambda-string", "statement", "indentation"],
)
def test_code_changes_change_the_version(tmp_path, edited):
    assert edited != BASE
    assert _version(tmp_path, edited) != _version(tmp_path, BASE)


def test_file_names_count(tmp_path):
    assert _version(tmp_path, BASE, "a.py") != _version(tmp_path, BASE, "b.py")


def test_the_version_is_the_same_on_other_pythons():
    """Python 3.12 tokenizes f-strings into many tokens; the version must not depend on that. Runs
    when another Python 3.10+ is on PATH (the pyenv versions on the dev machine; CI has 3.11 only)."""
    from shutil import which

    here = Path(__file__).resolve().parents[1]
    code = (here / "bench/core/filehash.py").read_text()
    snippet = code[code.index("def _code_tokens"):]
    script = (
        "import hashlib, io, tokenize, sys\nfrom pathlib import Path\n" + snippet
        + f"\nprint(source_version(Path({str(here / 'bench/data')!r})))\n"
    )
    pyenv = Path.home() / ".pyenv" / "versions"
    others = [str(p) for p in sorted(pyenv.glob("3.1[0-9]*/bin/python3")) if not p.parent.parent.name.startswith("3.11")]
    others += [p for v in ("3.10", "3.12", "3.13") if (p := which(f"python{v}"))]
    expected = source_version(here / "bench/data")
    ran = 0
    for python in others:
        out = subprocess.run([python, "-c", script], capture_output=True, text=True, timeout=60)
        if out.returncode != 0:  # a pyenv shim for a version not installed
            continue
        ran += 1
        assert out.stdout.strip() == expected, (python, out.stdout, out.stderr)
    if not ran:
        pytest.skip(f"no other Python 3.10+ on PATH (running {sys.version.split()[0]})")
