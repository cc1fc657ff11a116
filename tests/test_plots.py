"""Plot PNGs are re-saved with a palette (`reports/plots.py::compact_png`): smaller, and still the same picture."""

from __future__ import annotations

import shutil
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image

from fusebench.reports.plots import DPI, FAMILY_COLORS, FAMILY_MARKERS, compact_png


def _figure(path: Path, transparent: bool = False) -> None:
    """A generated plot of the kind the report draws: error bars, markers of every family, labels, a grid."""
    rng = np.random.default_rng(0)
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (family, colour) in enumerate(FAMILY_COLORS.items()):
        x, y = rng.uniform(1, 100, 4), rng.uniform(0.2, 0.9, 4)
        ax.errorbar(x, y, yerr=0.05, fmt=FAMILY_MARKERS[family], color=colour, capsize=3, label=family)
        for j in range(4):
            ax.annotate(str(4 * i + j), (x[j], y[j]), xytext=(5, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=DPI, transparent=transparent)
    plt.close(fig)


def test_a_plot_gets_a_palette_a_third_of_its_size_and_no_visible_change(tmp_path: Path) -> None:
    original, compact = tmp_path / "original.png", tmp_path / "compact.png"
    _figure(original)
    shutil.copy(original, compact)
    compact_png(compact)
    before, after = Image.open(original), Image.open(compact)
    assert after.mode == "P" and after.size == before.size
    assert compact.stat().st_size < original.stat().st_size / 2
    diff = np.abs(np.asarray(after.convert("RGB"), dtype=int) - np.asarray(before.convert("RGB"), dtype=int))
    assert diff.max() <= 32 and diff.mean() < 1.0, (diff.max(), diff.mean())
    palette = np.array([c for _, c in after.convert("RGB").getcolors(maxcolors=256) or []])
    for colour in FAMILY_COLORS.values():  # each family's colour survives within a few levels (measured: ≤ 3)
        rgb = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])
        assert np.abs(palette - rgb).max(axis=1).min() <= 4, colour


def test_a_transparent_png_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "clear.png"
    _figure(path, transparent=True)
    data = path.read_bytes()
    compact_png(path)
    assert path.read_bytes() == data


def _grey16(path: Path) -> None:
    Image.fromarray(np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (20, 1))).save(path)


def _keyed(path: Path) -> None:
    Image.new("RGB", (8, 8), (255, 255, 255)).save(path, transparency=(255, 255, 255))


def _grey_alpha(path: Path) -> None:
    alpha = np.tile(np.arange(9, dtype=np.uint8) * 30, (9, 1))
    Image.fromarray(np.dstack([np.full((9, 9), 80, np.uint8), alpha]), "LA").save(path)


def _tiny(path: Path) -> None:
    Image.new("RGB", (1, 1), (10, 20, 30)).save(path)


@pytest.mark.parametrize("make", [_grey16, _keyed, _grey_alpha, _tiny])
def test_a_png_the_palette_would_spoil_or_not_shrink_is_left_alone(tmp_path: Path, make) -> None:
    """Review of stop 37: a colour-keyed PNG was truncated (ValueError mid-save), a 16-bit grey one clipped to
    white, a grey+alpha one lost its alpha, and a 1-pixel one grew from 69 to 847 bytes."""
    path = tmp_path / "image.png"
    make(path)
    data = path.read_bytes()
    compact_png(path)
    assert path.read_bytes() == data
