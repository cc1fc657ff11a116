"""Packaging metadata that must stay true: the lock file covers the declared dependencies, LICENSE ships."""

from __future__ import annotations

import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # the test extras install tomli there
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]


def _lock() -> dict[str, Version]:
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if "==" in line and not line.lstrip().startswith("#"):
            name, version = line.split("==")
            pins[name.strip().lower().replace("_", "-")] = Version(version.split()[0])
    return pins


def test_lock_pins_every_declared_dependency_within_its_bounds():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    declared = list(project["dependencies"]) + extras["test"] + extras["postgres"]
    pins = _lock()
    for spec in map(Requirement, declared):
        if spec.marker is not None and not spec.marker.evaluate({"python_version": "3.11"}):
            continue  # the lock is compiled for Python 3.11 (CI's smoke/baseline interpreter)
        name = spec.name.lower().replace("_", "-")
        assert name in pins, f"{name} is declared in pyproject.toml but not pinned in requirements.lock: re-run uv pip compile"
        assert spec.specifier.contains(pins[name], prereleases=True), f"lock pins {name}=={pins[name]} outside {spec}"


def test_license_is_declared_and_present():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT" and (REPO / "LICENSE").read_text().startswith("MIT License")
