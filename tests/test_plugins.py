"""Plugins (issue 9, item 4): the README's "Add a strategy" example, run exactly as written.

Each command runs in a subprocess, as a user would run it, so that loading the plugin never leaks
into this test process's registry (other tests assert the built-in zoo).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _readme_plugin() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("## Add a strategy", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def _fusebench(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k != "FUSEBENCH_PLUGINS"}
    return subprocess.run([sys.executable, "-m", "fusebench", *args], cwd=cwd, env={**base, **(env or {})},
                          capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture()
def plugin(tmp_path: Path) -> Path:
    path = tmp_path / "my_strategy.py"
    path.write_text(_readme_plugin())
    return path


@pytest.mark.slow
def test_plugin_is_listed_with_flag_and_env(plugin: Path) -> None:
    out = _fusebench(["--plugin", plugin.name, "list", "strategies", "--json"], cwd=plugin.parent)
    assert out.returncode == 0, out.stderr
    info = {s["name"]: s for s in json.loads(out.stdout)}
    assert info["proj_mean"]["family"] == "mid" and "concat" in info
    env = _fusebench(["list", "strategies"], cwd=plugin.parent, env={"FUSEBENCH_PLUGINS": str(plugin)})
    assert env.returncode == 0 and "proj_mean" in env.stdout
    without = _fusebench(["list", "strategies"], cwd=plugin.parent)
    assert "proj_mean" not in without.stdout


@pytest.mark.slow
def test_check_strategy_passes_the_readme_example(plugin: Path) -> None:
    out = _fusebench(["check-strategy", str(plugin)], cwd=plugin.parent)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    passed = re.search(r"(\d+) passed", out.stdout)
    assert passed and int(passed.group(1)) >= 10, out.stdout[-2000:]  # every contract test × 2 specs
    assert "failed" not in out.stdout


@pytest.mark.slow
def test_check_strategy_fails_a_broken_strategy(plugin: Path) -> None:
    broken = plugin.parent / "broken_strategy.py"
    broken.write_text(_readme_plugin().replace('"proj_mean"', '"broken_mean"').replace(
        "for m in present", "for m in self.spec.dims"))  # KeyError when a modality is missing
    out = _fusebench(["check-strategy", str(broken)], cwd=plugin.parent)
    assert out.returncode == 1, out.stdout[-2000:]
    assert "test_missing_modality_at_inference[broken_mean-2mod]" in out.stdout


@pytest.mark.slow
def test_plugin_runs_in_worker_processes(plugin: Path, synthetic_bundle, tmp_path: Path) -> None:
    data, cfg = synthetic_bundle
    env = {"FUSEBENCH_CONFIG_DIR": str(cfg), "FUSEBENCH_DATA": str(data), "FUSEBENCH_TRAIN_THREADS": "1"}
    out = _fusebench(["--plugin", str(plugin), "run", "--suite", "toy", "--strategies", "proj_mean,concat,majority",
                      "--jobs", "2", "--trials", "1", "--seeds", "1", "--epochs", "2", "--out", str(tmp_path / "run")],
                     cwd=tmp_path, env=env, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "run" / "results.jsonl").read_text().splitlines() if line.strip()]
    assert {r["strategy"]: r["status"] for r in records} == {"proj_mean": "ok", "concat": "ok", "majority": "ok"}


def _run_with_constructor_lines(plugin: Path, synthetic_bundle, tmp_path: Path, jobs: str,
                                lines: str) -> tuple[subprocess.CompletedProcess, str]:
    """Run the toy suite with `proj_mean` (its constructor extended by `lines`) and `majority` on
    `jobs` processes; returns the process and its --log-file's text."""
    data, cfg = synthetic_bundle
    marker = "        super().__init__(spec, params)\n"
    assert marker in plugin.read_text()
    plugin.write_text(plugin.read_text().replace(marker, marker + lines, 1))
    env = {"FUSEBENCH_CONFIG_DIR": str(cfg), "FUSEBENCH_DATA": str(data), "FUSEBENCH_TRAIN_THREADS": "1",
           "FUSEBENCH_PROGRESS": "plain"}
    log_file = tmp_path / "run.log"
    out = _fusebench(["--plugin", str(plugin), "run", "--suite", "toy", "--strategies", "proj_mean,majority",
                      "--jobs", jobs, "--trials", "1", "--seeds", "1", "--epochs", "2", "--out", str(tmp_path / "run"),
                      "--log-file", str(log_file)], cwd=tmp_path, env=env, timeout=900)
    return out, log_file.read_text() if log_file.exists() else ""


@pytest.mark.slow
def test_worker_log_records_reach_the_parent_log_file(plugin: Path, synthetic_bundle, tmp_path: Path) -> None:
    """A `--jobs 2` run's cells train in worker processes; what they log must reach the run's
    --log-file (INFO and WARNING) and its terminal (WARNING) through the parent, as in one process."""
    out, text = _run_with_constructor_lines(
        plugin, synthetic_bundle, tmp_path, "2",
        "        import logging, os\n"
        "        logging.getLogger('fusebench.plugin').info('proj_mean built in pid %d', os.getpid())\n"
        "        logging.getLogger('fusebench.plugin').warning('proj_mean warns from pid %d', os.getpid())\n")
    assert out.returncode == 0, out.stderr[-3000:]
    built = re.findall(r"INFO fusebench\.plugin proj_mean built in pid (\d+)", text)
    assert built, text[-3000:]  # one per model built: the trial and the seed
    assert re.search(r"WARNING fusebench\.plugin proj_mean warns from pid \d+", text)
    assert f"proj_mean warns from pid {built[0]}" in out.stderr  # once, by the parent's terminal handler
    assert out.stderr.count(f"proj_mean warns from pid {built[0]}") == len(built)


@pytest.mark.parametrize("jobs", ["1", "2"])
@pytest.mark.slow
def test_optunas_own_warnings_reach_the_log_file_once(plugin: Path, synthetic_bundle, tmp_path: Path, jobs: str) -> None:
    """optuna logs a trial that failed (its exception and traceback) on its own logger, whose own
    stderr handler bypassed the run's handlers: the --log-file never had it, and a worker's went
    straight to the terminal, through the live bars. It goes through the run's handlers, once: the
    file with its traceback, the terminal one line."""
    out, text = _run_with_constructor_lines(plugin, synthetic_bundle, tmp_path, jobs,
                                            "        raise RuntimeError('proj_mean refuses to build')\n")
    assert out.returncode == 1, out.stderr[-3000:]  # proj_mean failed every trial: a failed cell
    assert re.search(r"WARNING optuna\S* Trial 0 failed", text), text[-3000:]
    assert "Traceback (most recent call last)" in text and "RuntimeError: proj_mean refuses to build" in text
    assert out.stderr.count("Trial 0 failed with parameters") == 1, out.stderr[-3000:]
    assert "Traceback" not in out.stderr  # the terminal's line names the error; -v or the file give the traceback


@pytest.mark.slow
def test_bad_plugins_exit_2_naming_them(tmp_path: Path) -> None:
    missing = _fusebench(["--plugin", "nope.py", "list", "strategies"], cwd=tmp_path)
    assert missing.returncode == 2 and "nope.py does not exist" in missing.stderr
    (tmp_path / "raises.py").write_text("raise RuntimeError('boom')\n")
    raises = _fusebench(["list", "strategies", "--plugin", "raises.py"], cwd=tmp_path)
    assert raises.returncode == 2
    assert "'" + str(tmp_path / "raises.py") + "' failed to import: RuntimeError: boom" in raises.stderr
    module = _fusebench(["--plugin", "no_such_module", "list", "strategies"], cwd=tmp_path)
    assert module.returncode == 2 and "no_such_module" in module.stderr
    dup = tmp_path / "dup.py"
    dup.write_text(_readme_plugin().replace('"proj_mean"', '"concat"'))
    clash = _fusebench(["--plugin", str(dup), "list", "strategies"], cwd=tmp_path)
    assert clash.returncode == 2 and "'concat' is already registered" in clash.stderr
