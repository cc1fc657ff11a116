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
        BASE + 'f"{print(1)}"\n',  # review: a bare f-string statement runs its expression (it was dropped
        # like a docstring on Python <= 3.11)
        "# -*- coding: latin-1 -*-\n" + BASE,  # review: a coding comment changes how the bytes decode
    ],
    ids=["constant", "name", "f-string", "lambda-string", "statement", "indentation", "bare-f-string", "coding"],
)
def test_code_changes_change_the_version(tmp_path, edited):
    assert edited != BASE
    assert _version(tmp_path, edited) != _version(tmp_path, BASE)


def test_an_edited_bare_f_string_changes_the_version(tmp_path):
    one = BASE + 'f"{print(1)}"\n'
    assert _version(tmp_path, one) != _version(tmp_path, one.replace("print(1)", "print(2)"))


def test_a_form_feed_line_does_not_shift_f_string_text(tmp_path):
    """Review: offsets came from str.splitlines(), which also splits on \\f, so on Python 3.12+ the
    f-string text was cut from the wrong place and an edit inside it could go unseen."""
    text = "x = 1\n\x0c\ny = f'{x+1}'\n"
    assert _version(tmp_path, text) != _version(tmp_path, text.replace("x+1", "x+2"))


def test_the_fingerprinted_packages_do_not_read_docstrings():
    """source_version ignores docstrings; that is only sound while the code never reads `__doc__`."""
    here = Path(__file__).resolve().parents[1]
    for folder in ("bench/data", "bench/features"):
        for src in (here / folder).glob("*.py"):
            assert "__doc__" not in src.read_text(), src


def test_file_names_count(tmp_path):
    assert _version(tmp_path, BASE, "a.py") != _version(tmp_path, BASE, "b.py")


def test_the_version_is_the_same_on_other_pythons(tmp_path):
    """Python 3.12 tokenizes f-strings into many tokens; the version must not depend on that. Runs
    when another Python 3.10+ is on PATH (the pyenv versions on the dev machine; CI has 3.11 only)."""
    from shutil import which

    here = Path(__file__).resolve().parents[1]
    tricky = tmp_path / "tricky"
    tricky.mkdir()
    (tricky / "a.py").write_text(BASE + 'f"{print(1)}"\n' + "\x0c\nz = f'{1+1}'\n")
    code = (here / "bench/core/filehash.py").read_text()
    snippet = code[code.index("_CODING = "):]
    script = (
        "import hashlib, io, re, tokenize, sys\nfrom pathlib import Path\n" + snippet
        + f"\nprint(source_version(Path({str(here / 'bench/data')!r})), source_version(Path({str(tricky)!r})))\n"
    )
    pyenv = Path.home() / ".pyenv" / "versions"
    others = [str(p) for p in sorted(pyenv.glob("3.1[0-9]*/bin/python3")) if not p.parent.parent.name.startswith("3.11")]
    others += [p for v in ("3.10", "3.12", "3.13") if (p := which(f"python{v}"))]
    expected = f"{source_version(here / 'bench/data')} {source_version(tricky)}"
    ran = 0
    for python in others:
        out = subprocess.run([python, "-c", script], capture_output=True, text=True, timeout=60)
        if out.returncode != 0:  # a pyenv shim for a version not installed
            continue
        ran += 1
        assert out.stdout.strip() == expected, (python, out.stdout, out.stderr)
    if not ran:
        pytest.skip(f"no other Python 3.10+ on PATH (running {sys.version.split()[0]})")
