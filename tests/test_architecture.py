"""The package's shape, checked by reading imports: one namespace, layers that only import downward,
no import cycles between modules, and modules small enough to read (DESIGN.md, dependency rules)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# fusebench subpackage → folder in the repository (pyproject's package-dir mapping).
ROOTS = {"fusebench": REPO / "bench", "fusebench.strategies": REPO / "strategies", "fusebench.reports": REPO / "reports"}
# A layer may import its own layer and any lower one; never a higher one (an "upward arrow").
LAYERS = {
    "core": 0, "config": 1, "results": 1, "data": 2, "features": 3, "strategies": 4, "training": 5,
    "measure": 6, "search": 6, "reports": 6, "run": 7, "cli": 8, "__main__": 9,
}
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    mods: dict[str, Path] = {}
    for pkg, folder in ROOTS.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            mods[".".join([pkg, *parts])] = path
    return mods


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def _imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fusebench"):
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("fusebench"))
    return out


MODULES = _modules()


def test_every_module_is_in_a_layer():
    missing = sorted(m for m in MODULES if m != "fusebench" and _layer(m) is None)
    assert not missing, f"add these subpackages to LAYERS: {missing}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module: str):
    mine = _layer(module)
    if mine is None:
        return
    upward = sorted(i for i in _imports(MODULES[module]) if i in MODULES and (_layer(i) or 0) > mine)
    assert not upward, f"{module} (layer {mine}) imports higher layers: {upward}"


def test_no_import_cycles():
    graph = {m: {i for i in _imports(p) if i in MODULES and i != m} for m, p in MODULES.items()}
    # package __init__ imports of its own submodules (registration) are not cycles of interest
    for m in graph:
        graph[m] = {i for i in graph[m] if not (i.startswith(m + ".") and MODULES[m].name == "__init__.py")}
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " → ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_stay_small(module: str):
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[module]} has {lines} lines (> {MAX_LINES}): split it by concern"


def test_strategies_import_only_core_and_torch():
    for module, path in MODULES.items():
        if module.startswith("fusebench.strategies"):
            bad = sorted(i for i in _imports(path) if i in MODULES and _layer(i) not in (0, 4))
            assert not bad, f"{module} imports {bad}: a strategy knows nothing of data, search, runs or reports"


def test_every_package_folder_is_shipped():
    """Every folder with an `__init__.py` is in pyproject's `packages` list, or the wheel lacks it.

    The wheel test (integration) would catch it too, minutes later: `fusebench.training.finetune` was
    missing from the list, and `fusebench run` from an installed wheel failed with ModuleNotFoundError.
    """
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    roots = {**ROOTS, "fusebench.datasets_cfg": REPO / "datasets_cfg"}
    found = set()
    for pkg, folder in roots.items():
        for init in folder.rglob("__init__.py"):
            rel = init.parent.relative_to(folder)
            found.add(".".join([pkg, *rel.parts]))
    assert found - listed == set(), f"add to [tool.setuptools] packages in pyproject.toml: {sorted(found - listed)}"
