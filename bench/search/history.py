"""Trial history of a study, exported into the run directory at run time.

Reports read run-directory files only (never an optuna storage, which may be a PostgreSQL server
the reader cannot reach, or a journal another process is appending to), so every cell writes its
study's trials to `RUN_DIR/history/<dataset>/<strategy>.csv` once its search is over: one row per
trial with its number, state, value (validation metric), start/end times and parameters.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import optuna
import pandas as pd

from fusebench.core.io import atomic_write_bytes
from fusebench.results.resample import strategy_stem

COLUMNS = ["number", "state", "value", "datetime_start", "datetime_complete", "duration_s", "params"]


def history_path(run_dir: Path, study_name: str) -> Path:
    """`RUN_DIR/history/<dataset>/<strategy>.csv` (':' in a strategy name becomes '__', as for predictions)."""
    dataset, _, strategy = study_name.partition("/")
    return Path(run_dir) / "history" / dataset / f"{strategy_stem(strategy).replace('/', '@')}.csv"


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    rows = []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        dur = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else None
        rows.append({"number": t.number, "state": t.state.name, "value": t.value,
                     "datetime_start": t.datetime_start, "datetime_complete": t.datetime_complete,
                     "duration_s": dur, "params": json.dumps(t.params, sort_keys=True, default=str)})
    return pd.DataFrame(rows, columns=COLUMNS)


def export_history(study: optuna.Study, run_dir: Path) -> Path:
    """Write the study's trials to its history CSV (atomically) and return the path."""
    path = history_path(run_dir, study.study_name)
    buf = io.StringIO()
    trials_frame(study).to_csv(buf, index=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue().encode())
    return path


def read_histories(run_dir: Path, dataset: str) -> dict[str, list[float]]:
    """strategy → values of its COMPLETE trials in trial order, from the exported CSVs of `dataset`
    (search replicate 0; replicates r ≥ 1 are exported as `<strategy>@r<r>.csv` and not plotted)."""
    folder = Path(run_dir) / "history" / dataset
    out: dict[str, list[float]] = {}
    for path in sorted(folder.glob("*.csv")):
        if "@" in path.stem:
            continue
        df = pd.read_csv(path)
        done = df[(df.state == "COMPLETE") & df.value.notna()].sort_values("number")
        out[path.stem.replace("__", ":")] = done.value.astype(float).tolist()
    return out
