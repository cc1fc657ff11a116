"""sha256 of files' actual bytes, hashed once and reused while size and mtime are unchanged.

Provenance must not trust a manifest: a data file changed under an unchanged MANIFEST.json has to
change the fingerprint and the cache keys. Hashing gigabytes on every run would be slow, so digests
are kept in a small stat cache (`cache_root()/sha256-stat.json`, keyed by absolute path, holding
size, mtime_ns and inode); any change of those rehashes the file. A read-only cache just rehashes.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import threading
import tokenize
from pathlib import Path

from fusebench.core.io import atomic_write_bytes
from fusebench.core.paths import cache_root

log = logging.getLogger(__name__)
_LOCK = threading.Lock()
_MEMO: dict[str, dict] | None = None


def _stat_path() -> Path:
    return cache_root() / "sha256-stat.json"


def _load() -> dict[str, dict]:
    global _MEMO
    if _MEMO is None:
        try:
            data = json.loads(_stat_path().read_text())
            _MEMO = data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            _MEMO = {}
    return _MEMO


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_file(path: Path) -> str:
    """sha256 (hex) of `path`'s bytes, from the stat cache when size, mtime and inode are unchanged."""
    path = Path(path).resolve()
    st = path.stat()
    stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}
    with _LOCK:
        memo = _load()
        known = memo.get(str(path))
        if known and all(known.get(k) == v for k, v in stamp.items()):
            return str(known["sha256"])
    digest = _digest(path)
    with _LOCK:
        memo = _load()
        memo[str(path)] = {**stamp, "sha256": digest}
        try:
            atomic_write_bytes(_stat_path(), json.dumps(memo, sort_keys=True).encode())
        except OSError as exc:
            log.debug("sha256 stat cache not written (%s)", exc)
    return digest


def forget() -> None:
    """Drop the in-memory copy (tests that change the cache root)."""
    global _MEMO
    with _LOCK:
        _MEMO = None


_CODING = re.compile(r"^[ \t\f]*#.*?coding[:=][ \t]*[-\w.]+")


def _prefix(literal: str) -> str:
    """The lower-cased prefix letters of a string literal (`rb`, `f`, ...)."""
    return literal[: len(literal) - len(literal.lstrip("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"))].lower()


def _code_tokens(source: str) -> str:
    """The source's tokens without comments, blank lines, formatting or statement-level strings
    (docstrings, but not f-strings, which run their expressions): what the interpreter runs. PEP 263
    coding comments are kept. Stable across Python versions (f-strings are taken as their source
    text, as Python < 3.12 tokenizes them). Unparseable source: the text itself. Code that reads
    `__doc__` would see a docstring edit that this version ignores; bench/data and bench/features
    do not (tests/test_source_version.py checks it)."""
    out: list[str] = []
    lines = io.StringIO(source).readlines()  # the lines tokenize sees (str.splitlines also splits on \f, \x1c, ...)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))

    def at(pos: tuple[int, int]) -> int:
        return offsets[pos[0] - 1] + pos[1]

    fstring_start = getattr(tokenize, "FSTRING_START", None)
    fstring_end = getattr(tokenize, "FSTRING_END", None)
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError):
        return source
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.ENCODING, tokenize.ENDMARKER}
    i, statement_start = 0, True
    while i < len(tokens):
        tok = tokens[i]
        if tok.type == tokenize.COMMENT and tok.start[0] <= 2 and _CODING.match(tok.string):
            out.append(tok.string)  # a PEP 263 encoding declaration changes how the file decodes
            i += 1
            continue
        if tok.type in skip:
            i += 1
            continue
        if tok.type == fstring_start:  # Python >= 3.12: one f-string is many tokens; keep its source text
            depth, j = 0, i
            while j < len(tokens):
                depth += (tokens[j].type == fstring_start) - (tokens[j].type == fstring_end)
                if depth == 0:
                    break
                j += 1
            text = source[at(tok.start):at(tokens[j].end)]
            out.append(text)
            statement_start, i = False, j + 1
            continue
        j = next((k for k in range(i + 1, len(tokens)) if tokens[k].type not in skip), len(tokens))
        if (statement_start and tok.type == tokenize.STRING and "f" not in _prefix(tok.string)
                and (j == len(tokens) or tokens[j].type == tokenize.NEWLINE)):
            i = j + 1  # a docstring or other bare string statement, with its NEWLINE: no effect on what runs
            continue  # (an f-string statement runs its {expressions}: it is kept)
        out.append(tok.string if tok.type not in (tokenize.INDENT, tokenize.DEDENT) else f"<{tok.type}>")
        statement_start = tok.type in (tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT) or (
            tok.type == tokenize.OP and tok.string == ";")
        i += 1
    return "\x00".join(out)


def source_version(folder: Path) -> str:
    """sha256 (12 hex) of a package folder's Python code (file names and code tokens): a code version
    that changes whenever the code that built or encoded data changes, so fingerprints cannot go
    stale, but not when only comments, docstrings or formatting change (re-encoding hours of
    features for a reworded docstring would make the cache useless to the people editing it)."""
    h = hashlib.sha256()
    for src in sorted(Path(folder).glob("*.py")):
        h.update(src.name.encode() + b"\x00" + _code_tokens(src.read_text(encoding="utf-8")).encode() + b"\x01")
    return h.hexdigest()[:12]
