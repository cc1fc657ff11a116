"""Run identity columns for leaderboard.csv: which suite, settings and data made each row.

`compare` uses them to refuse comparing boards made on different data (a regression gate must not
pass or fail because the data changed). The columns come from the run directory's run.json
(`identity`, written by `fusebench run`) and from the records' own `data_fingerprint`.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pandas as pd

from fusebench.results.records import Record

COLUMNS = ("suite", "config_hash", "data_fingerprint")


def with_identity(board: pd.DataFrame, records: list[Record], run_dir: Path) -> pd.DataFrame:
    """`board` with `suite`, `config_hash` and `data_fingerprint` columns (empty where unknown)."""
    try:
        ident = json.loads((Path(run_dir) / "run.json").read_text()).get("identity") or {}
    except (OSError, ValueError, AttributeError):
        ident = {}
    prints: dict[str, Counter] = {}
    for r in records:
        if r.status == "ok" and r.data_fingerprint:
            prints.setdefault(r.dataset, Counter())[r.data_fingerprint] += 1
    board = board.copy()
    if "dataset" not in board.columns:
        return board
    board["suite"] = ident.get("suite") or ""
    board["config_hash"] = ident.get("config_hash") or ""
    board["data_fingerprint"] = [prints[d].most_common(1)[0][0] if d in prints else "" for d in board["dataset"]]
    return board
