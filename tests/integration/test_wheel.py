"""The built wheel works outside the checkout (issue 9, item 3).

Builds the wheel with uv, installs it into a fresh venv in a temporary folder (CPU torch constraint,
`$PIP_FIND_LINKS` when set, the shared uv cache: nothing is downloaded twice and no CUDA build is
pulled), and from another directory runs `fusebench list datasets` and a miniature `fusebench run
--suite tiny`. The tests import the checkout; this one is the only one that sees what a user installs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "datasets_cfg"
BUILTIN_DATASETS = {p.stem for p in CONFIGS.glob("*.yaml") if not p.name.startswith("_")}
BUILTIN_SUITES = {p.stem for p in (CONFIGS / "suites").glob("*.yaml")}


def _uv() -> list[str]:
    """uv from PATH, else the one bootstrap installed into the interpreter running the tests."""
    found = shutil.which("uv")
    if found:
        return [found]
    return [sys.executable, "-m", "uv"]


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return proc


def _same_versions(base: Path) -> Path:
    """Constraints pinning every distribution of the test's own environment.

    The wheel's venv then gets exactly the versions the suite runs with — the pinned CPU torch where
    bootstrap found it, the plain torch it fell back to on a fresh machine, the CUDA build on a GPU
    machine — straight from the uv cache, instead of a pin that only some machines can satisfy.
    """
    frozen = _run([*_uv(), "pip", "freeze", "--python", sys.executable], cwd=base).stdout
    pins = [line for line in frozen.splitlines() if "==" in line and not line.lower().startswith("fusebench")]
    path = base / "same-versions.txt"
    path.write_text("\n".join(pins) + "\n")
    return path


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(bin folder of a fresh venv holding only the built wheel and its dependencies, a work dir outside the repo)."""
    base = tmp_path_factory.mktemp("wheel")
    dist, venv, work = base / "dist", base / "venv", base / "elsewhere"
    work.mkdir()
    # sdist first, wheel from the unpacked sdist: a stale build/ folder in the checkout cannot leak into it,
    # and the sdist is checked to carry the package data too
    _run([*_uv(), "build", "--out-dir", str(dist), str(REPO)], cwd=base)
    wheels = sorted(dist.glob("fusebench-*.whl"))
    assert len(wheels) == 1, f"expected one wheel, got {wheels}"
    _run([*_uv(), "venv", "-q", "--python", sys.executable, str(venv)], cwd=base)
    extra: list[str] = ["-c", str(_same_versions(base))]
    if os.environ.get("PIP_FIND_LINKS"):
        extra += ["--find-links", os.environ["PIP_FIND_LINKS"]]
    _run([*_uv(), "pip", "install", "-q", "--python", str(venv / "bin" / "python"), *extra, str(wheels[0])], cwd=base)
    return venv / "bin", work


def _env() -> dict[str, str]:
    """The test's environment without anything that would point the wheel back at the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "FUSEBENCH_CONFIG_DIR", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return env


def test_wheel_installs_one_namespace(installed: tuple[Path, Path]) -> None:
    bin_dir, work = installed
    code = ("import importlib.util, json, fusebench, fusebench.datasets_cfg as d;"
            "print(json.dumps([fusebench.__file__, d.__file__] + "
            "[n for n in ('bench', 'strategies', 'reports', 'datasets_cfg') if importlib.util.find_spec(n)]))")
    paths = json.loads(_run([str(bin_dir / "python"), "-c", code], cwd=work, env=_env()).stdout)
    assert all(str(REPO) not in p for p in paths[:2]), f"imported from the checkout: {paths}"
    assert paths[2:] == [], f"generic top-level packages installed: {paths[2:]}"


def test_wheel_lists_builtin_configs(installed: tuple[Path, Path]) -> None:
    bin_dir, work = installed
    datasets = json.loads(_run([str(bin_dir / "fusebench"), "list", "datasets", "--json"], cwd=work, env=_env()).stdout)
    assert {d["name"] for d in datasets} == BUILTIN_DATASETS
    suites = json.loads(_run([str(bin_dir / "fusebench"), "list", "suites", "--json"], cwd=work, env=_env()).stdout)
    assert {s["name"] for s in suites} == BUILTIN_SUITES


def test_wheel_runs_tiny_suite(installed: tuple[Path, Path], data_root: Path) -> None:
    bin_dir, work = installed
    cmd = [str(bin_dir / "fusebench"), "run", "--suite", "tiny", "--data-dir", str(data_root), "--out", "run",
           "--strategies", "concat,majority", "--trials", "1", "--seeds", "1", "--epochs", "1"]
    _run(cmd, cwd=work, env=_env(), timeout=900)
    records = [json.loads(line) for line in (work / "run" / "results.jsonl").read_text().splitlines() if line.strip()]
    tiny = set(yaml.safe_load((CONFIGS / "suites" / "tiny.yaml").read_text())["datasets"])
    assert {(r["dataset"], r["strategy"]) for r in records} == {(d, s) for d in tiny for s in ("concat", "majority")}
    assert all(r["status"] == "ok" for r in records), [r.get("error") for r in records]
    assert (work / "run" / "leaderboard.md").is_file()
    private = [str(f) for f in (work / "run").rglob("*") if f.is_file() and f.stat().st_mode & 0o044 != 0o044]
    assert not private, f"run outputs not readable by group/others (want 0644 under the usual umask): {private}"
