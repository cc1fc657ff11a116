"""The report as a person sees it: report.html of a real run opened in headless Chromium."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from fusebench.cli import main

pytestmark = pytest.mark.integration

# Debian's packages by default; a runner with another Chrome build (GitHub's ubuntu images ship Google
# Chrome + a matching chromedriver) points these at it.
CHROMIUM = os.environ.get("FUSEBENCH_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("FUSEBENCH_CHROMEDRIVER", "/usr/bin/chromedriver")


def _driver(profile: Path):
    if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
        pytest.fail(f"{CHROMIUM} / {CHROMEDRIVER} missing: install Debian's chromium and chromium-driver "
                    "(`.ci/run` installs them: apt-get install -y chromium chromium-driver; or set FUSEBENCH_CHROMIUM / "
                    "FUSEBENCH_CHROMEDRIVER). This test must not be skipped.")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1280,2400", f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


def test_report_renders_in_chromium(tiny_run, tmp_path, capsys):
    import json

    from fusebench.reports.plots import overlapping

    run_dir, code = tiny_run
    assert code == 0
    capsys.readouterr()
    assert main(["report", str(run_dir), "--html"]) == 0
    report = run_dir / "report.html"
    assert f"wrote {report.resolve()}" in capsys.readouterr().out  # the user is told where the HTML is
    # no two labels of any plot overlap (boxes measured when each plot was drawn)
    label_files = sorted((run_dir / "plots").glob("*.labels.json"))
    assert len(label_files) >= 8
    clashes = {f.name: overlapping(json.loads(f.read_text())) for f in label_files}
    assert not any(clashes.values()), {k: v for k, v in clashes.items() if v}
    # the history plot comes from the trial history exported at run time, not from the storage
    assert any((run_dir / "history").glob("*/*.csv"))
    driver = _driver(tmp_path / "profile")
    try:
        driver.get(report.as_uri())
        assert driver.title == "fusebench report"
        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert not errors, errors
        tables = driver.execute_script("return Array.from(document.querySelectorAll('table')).map(t => t.rows.length)")
        assert len(tables) >= 5 and all(n > 1 for n in tables), tables
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])")
        assert len(images) >= 8, images
        broken = [alt for alt, complete, width in images if not complete or width == 0]
        assert not broken, f"images that did not render: {broken}"
        verdicts = driver.execute_script("return Array.from(document.querySelectorAll('p.verdict')).map(p => p.textContent)")
        assert len(verdicts) == 1 + 4 and all(v.startswith("Verdict.") for v in verdicts), verdicts
        device = driver.execute_script("return document.querySelector('table.meta tr td').textContent")
        assert device.startswith(("CPU: ", "GPU: ")) and device not in ("CPU: x86_64", "CPU: "), device
        headings = driver.execute_script("return Array.from(document.querySelectorAll('h2')).map(h => h.textContent)")
        for ds in ("avmnist", "esc50", "flickr8k-itm", "imdb"):
            assert any(h.startswith(ds) for h in headings), headings
        assert driver.execute_script("return document.querySelectorAll('tr.failed').length") == 0
        # every task's board has the trials column, visible, and each searched row says completed/budgeted
        trials = driver.execute_script(
            "return Array.from(document.querySelectorAll('table')).filter(t => t.rows[0].textContent.includes('runs'))"
            ".map(t => { const i = Array.from(t.rows[0].cells).findIndex(c => c.textContent === 'trials');"
            " return i < 0 ? null : Array.from(t.rows).slice(1).map(r => [r.cells[1].textContent, r.cells[i].innerText,"
            " r.cells[i].getBoundingClientRect().width]); })")
        assert len(trials) == 4 and all(t is not None for t in trials), trials
        cells = [c for t in trials for c in t]
        assert all(width > 0 for _, _, width in cells), cells
        searched = [text for name, text, _ in cells if name not in ("majority", "random")]
        assert searched and all(re.match(r"\d+/\d+", text) for text in searched), cells
        height = driver.execute_script("return document.body.scrollHeight")
        driver.set_window_size(1280, min(int(height) + 100, 16000))  # the whole page in one screenshot
        shot = tmp_path / "report.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        keep = Path(os.environ.get("FUSEBENCH_SCREENSHOT", ""))
        if keep.name:
            shutil.copy(shot, keep)
    finally:
        driver.quit()
