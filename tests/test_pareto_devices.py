"""The Pareto front of a task whose rows were measured on two devices (GPU session 3: `film` and
`majority` on an H100, the rest on an H200) is drawn per device: a row stays on its device's front
whatever the other card's samples/s, in pareto.csv/md and in the plot, whose key tags each row's device."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fusebench.reports.pareto import pareto_table, write_pareto
from fusebench.reports.plots import device_pareto_front, pareto_front, quality_vs_throughput

H100, H200 = "cuda:NVIDIA H100 80GB HBM3", "cuda:NVIDIA H200"


def _board(rows: list[tuple[str, str, float, float, str]]) -> pd.DataFrame:
    return pd.DataFrame([{"dataset": "esc50", "strategy": s, "family": f, "metric": "accuracy", "mean": m,
                          "status": "ok", "ci95": 0.01, "ci95_low": np.nan, "ci95_high": np.nan,
                          "infer_samples_per_s": t, "train_samples_per_s": 1e5, "params_count": 10, "device": d,
                          "rank": float(i + 1)} for i, (s, f, m, t, d) in enumerate(rows)])


# film (H100) is dominated by concat (H200: as good, and faster because the card is): across devices it
# would leave the front; it is the best and only row of its device, so it is on that device's front
ROWS = [("concat", "early", 0.50, 1.5e6, H200), ("film", "mid", 0.49, 7e5, H100), ("gmu", "mid", 0.46, 5e5, H200),
        ("mult", "mid", 0.45, 4e5, H100)]


def test_a_row_is_on_its_own_devices_front_whatever_the_other_card_measured(tmp_path: Path) -> None:
    table = pareto_table(_board(ROWS))
    assert dict(zip(table.strategy, table.on_pareto_front, strict=True)) == {
        "concat": True, "film": True, "gmu": False, "mult": False}  # before: film False, dominated by the H200
    write_pareto([], _board(ROWS), tmp_path)
    assert "★ marks the front of each device's rows" in (tmp_path / "pareto.md").read_text()


def test_with_one_device_and_a_row_of_several_the_section_does_not_claim_a_front_per_device(tmp_path: Path) -> None:
    """Review of stop 33: rows of one device and one of "A; B" have the one front of all rows (the joined row
    on it), but pareto.md said "★ marks the front of each device's rows"."""
    rows = [("concat", "early", 0.50, 1.5e6, H200), ("film", "mid", 0.55, 7e5, f"{H100}; {H200}"),
            ("gmu", "mid", 0.46, 5e5, H200)]
    assert dict(zip(pareto_table(_board(rows)).strategy, pareto_table(_board(rows)).on_pareto_front, strict=True)) == {
        "concat": True, "film": True, "gmu": False}
    write_pareto([], _board(rows), tmp_path)
    text = (tmp_path / "pareto.md").read_text()
    assert "`film` (" in text and "measured on several devices" in text
    assert "each device's rows" not in text


def test_the_plot_draws_one_front_per_device_and_tags_each_row(tmp_path: Path) -> None:
    path = quality_vs_throughput(_board(ROWS), "esc50", tmp_path)
    texts = [b["text"] for b in json.loads(path.with_suffix(".labels.json").read_text())]
    assert any("film  [D1]  ★" in t for t in texts) and any("concat  [D2]  ★" in t for t in texts), texts
    assert any(f"D1 = {H100}; D2 = {H200}" in t for t in texts), texts
    one = _board([(s, f, m, t, H200) for s, f, m, t, _ in ROWS])
    texts = [b["text"] for b in json.loads(quality_vs_throughput(one, "esc50", tmp_path).with_suffix(".labels.json").read_text())]
    assert not any("[D1]" in t or "D1 =" in t for t in texts), texts  # one device: the plot as before


@pytest.mark.parametrize("missing", ["", None, np.nan])
def test_a_row_without_a_device_is_not_a_device_of_its_own(tmp_path: Path, missing) -> None:
    """One device and a row of none (records before the field; NaN from a CSV): one device, as the
    Devices line counts them, so one front, on which the worse and slower row is not (review of stop 30:
    it was alone on a front of its own, ★, and the plot tagged D1 = "no device recorded")."""
    rows = [("concat", "early", 0.50, 1.5e6, H200), ("gmu", "mid", 0.46, 5e5, H200), ("film", "mid", 0.40, 1e5, missing)]
    front = pareto_table(_board(rows)).set_index("strategy").on_pareto_front.to_dict()
    assert front == {"concat": True, "gmu": False, "film": False}
    texts = [b["text"] for b in json.loads(quality_vs_throughput(_board(rows), "esc50", tmp_path)
                                           .with_suffix(".labels.json").read_text())]
    assert not any("D1" in t for t in texts), texts


def test_a_row_of_several_devices_or_none_stays_off_every_front_beside_two_devices(tmp_path: Path) -> None:
    """A row whose seeds ran on two cards (`"A; B"`, stored before devices were checked) or on no recorded
    one cannot be placed on either card's front (review of stop 30: `"A; B"` was a third device, ★ alone)."""
    rows = [*ROWS, ("early_sum", "early", 0.30, 1e4, f"{H100}; {H200}"), ("lmf", "mid", 0.99, 1e7, "")]
    front = pareto_table(_board(rows)).set_index("strategy").on_pareto_front.to_dict()
    assert front == {"concat": True, "film": True, "gmu": False, "mult": False, "early_sum": False, "lmf": False}
    texts = [b["text"] for b in json.loads(quality_vs_throughput(_board(rows), "esc50", tmp_path)
                                           .with_suffix(".labels.json").read_text())]
    assert any("early_sum  [several]" in t for t in texts) and any("lmf  [no device]" in t for t in texts), texts


points = st.lists(st.tuples(st.floats(1, 1e6), st.floats(0, 1), st.sampled_from(["a", "b", "", "a; b"])),
                  min_size=1, max_size=12)


@given(points)
def test_the_device_front_is_each_devices_own_front(rows: list[tuple[float, float, str]]) -> None:
    x, y = np.array([r[0] for r in rows]), np.array([r[1] for r in rows])
    devices = [r[2] for r in rows]
    front = device_pareto_front(x, y, devices)
    single = {d for d in devices if d in ("a", "b")}
    if len(single) < 2:  # one device or none named: the one front of all rows
        assert front.tolist() == pareto_front(x, y).tolist()
        return
    for d in single:
        idx = np.flatnonzero(np.array(devices) == d)
        assert front[idx].tolist() == pareto_front(x[idx], y[idx]).tolist()
    assert not any(f for f, d in zip(front, devices, strict=True) if d not in single)
