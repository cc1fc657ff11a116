"""Quality versus throughput per task: the table behind the Pareto plot (`pareto.csv`, `pareto.md`).

A strategy is on the Pareto front of its task when no other strategy of the task is at least as
good on both the mean main metric and inference samples/s (at the evaluation batch size) and
strictly better on one. Where a task's rows were measured on several devices (a run resumed on another
machine), the front is drawn per device: samples/s of two cards do not compare strategies.
Sanity baselines (majority/random) and failed cells are left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from fusebench.core.io import atomic_write_bytes
from fusebench.reports.plots import device_pareto_front, row_devices
from fusebench.reports.verdicts import device_note, is_floor, mean_digits, measured_devices
from fusebench.results.records import Record

COLUMNS = ["dataset", "strategy", "family", "metric", "mean", "infer_samples_per_s", "infer_samples_per_s_bs1",
           "latency_ms_p50", "train_samples_per_s", "params_count", "flops_per_sample", "peak_mem_mb", "on_pareto_front"]


def _per_cell(records: Sequence[Record]) -> pd.DataFrame:
    """Median per (dataset, strategy) of the record-level throughput fields the board lacks."""
    rows = [{"dataset": r.dataset, "strategy": r.strategy, "flops_per_sample": r.flops_per_sample,
             "infer_samples_per_s_bs1": r.throughput.infer_samples_per_s_bs1 if r.throughput else None,
             "latency_ms_p50": r.throughput.latency_ms_p50 if r.throughput else None,
             "peak_mem_mb": r.throughput.peak_mem_mb if r.throughput else None}
            for r in records if r.status == "ok"]
    if not rows:
        return pd.DataFrame(columns=["dataset", "strategy", "flops_per_sample", "infer_samples_per_s_bs1",
                                     "latency_ms_p50", "peak_mem_mb"])
    return pd.DataFrame(rows).astype({"flops_per_sample": float}).groupby(["dataset", "strategy"], as_index=False).median()


def pareto_table(board: pd.DataFrame, records: Sequence[Record] = ()) -> pd.DataFrame:
    """Per task (rows sorted by mean, best first): strategy, mean main metric, inference (eval batch
    and batch 1) and training samples/s, params, FLOPs/sample, peak memory, on_pareto_front."""
    if board.empty:
        return pd.DataFrame(columns=COLUMNS)
    ok = board[board.status == "ok"]
    ok = ok[~np.array([is_floor(s, f) for s, f in zip(ok.strategy, ok.family, strict=True)], dtype=bool)]  # dual encoder stays
    extra = _per_cell(records)
    ok = ok.merge(extra, on=["dataset", "strategy"], how="left") if not extra.empty else ok.assign(
        flops_per_sample=np.nan, infer_samples_per_s_bs1=np.nan, latency_ms_p50=np.nan, peak_mem_mb=np.nan)
    rows = []
    for _, g in ok.groupby("dataset", sort=True):
        g = g[np.isfinite(g["mean"].astype(float)) & np.isfinite(g.infer_samples_per_s.astype(float))]
        front = device_pareto_front(g.infer_samples_per_s.to_numpy(float), g["mean"].to_numpy(float), row_devices(g))
        rows.append(g.assign(on_pareto_front=front).sort_values("mean", ascending=False))
    if not rows:
        return pd.DataFrame(columns=COLUMNS)
    return pd.concat(rows)[COLUMNS].reset_index(drop=True)


def _num(x: object, fmt: str) -> str:
    return "–" if x is None or (isinstance(x, float) and not np.isfinite(x)) else format(x, fmt)


def to_markdown(table: pd.DataFrame, notes: dict[str, str] | None = None) -> str:
    """`notes`: a line per task to print under its heading (`verdicts.device_note`, as the leaderboard prints it)."""
    lines = ["## Quality vs throughput (Pareto front)", "",
             ("Inference samples/s at the evaluation batch size; ★ = on the task's Pareto front (no other strategy is "
              "at least as good on both quality and inference throughput). Data: `pareto.csv`; plot: "
              "`plots/<task>-pareto.png` (`fusebench report --html`)."), ""]
    if table.empty:
        return "\n".join(lines + ["No records with throughput.", ""])
    for dataset, g in table.groupby("dataset", sort=True):
        lines += [f"### {dataset} — {g.metric.iloc[0]}", ""]
        if note := (notes or {}).get(str(dataset)):  # rows from two devices: the front compares the devices too
            lines += [f"**Devices.** {note}", ""]
        lines += ["| strategy | family | mean | infer samples/s | bs-1 samples/s | train samples/s | params | "
                  "FLOPs/sample | front |",
                  "|---|---|---:|---:|---:|---:|---:|---:|:---:|"]
        mean_fmt = f".{mean_digits(g.metric.iloc[0] == 'rsum')}f"  # rsum: the main metric of a retrieval task only
        for _, r in g.iterrows():
            lines.append(f"| `{r.strategy}` | {r.family} | {_num(r['mean'], mean_fmt)} | {_num(r.infer_samples_per_s, ',.0f')} | "
                         f"{_num(r.infer_samples_per_s_bs1, ',.0f')} | {_num(r.train_samples_per_s, ',.0f')} | "
                         f"{int(r.params_count):,} | {_num(r.flops_per_sample, '.3g')} | {'★' if r.on_pareto_front else ''} |")
        lines.append("")
    return "\n".join(lines)


def _front_note(g: pd.DataFrame) -> str:
    """The task's `device_note`, and which front ★ marks: each device's own where two or more devices are
    named (`plots.device_pareto_front`), else the one front of all rows (a row of several devices included)."""
    note = device_note(g)
    if not note or len(measured_devices(row_devices(g))) < 2:
        return note
    return f"{note} ★ marks the front of each device's rows."


def write_pareto(records: Sequence[Record], board: pd.DataFrame, run_dir: Path) -> pd.DataFrame:
    """RUN_DIR/pareto.csv and pareto.md, and the same section appended to leaderboard.md."""
    table = pareto_table(board, records)
    atomic_write_bytes(run_dir / "pareto.csv", table.to_csv(index=False).encode())
    md = to_markdown(table, {str(d): _front_note(g) for d, g in board.groupby("dataset")} if not board.empty else {})
    atomic_write_bytes(run_dir / "pareto.md", md.encode())
    board_md = run_dir / "leaderboard.md"
    if board_md.is_file():
        text = board_md.read_text(encoding="utf-8")
        head = "## Quality vs throughput (Pareto front)"
        text = text.split("\n" + head)[0].rstrip("\n") + "\n\n" + md
        atomic_write_bytes(board_md, text.encode())
    return table
