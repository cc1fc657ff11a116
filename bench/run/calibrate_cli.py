"""The `fusebench calibrate` command line: its arguments and a thin handler (the work is in
`run.calibrate`, imported only when the command runs, so building the parser stays light)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(cal: argparse.ArgumentParser) -> None:
    cal.add_argument("--dataset", required=True, help="dataset name")
    cal.add_argument("--strategy", required=True, help="a searched strategy (unimodal:VIEW for a unimodal one)")
    cal.add_argument("--size", default="tiny", help="dataset size (default tiny)")
    cal.add_argument("--repeats", type=int, required=True, help="A/A repeats N")
    cal.add_argument("--replicates", type=int, default=3, help="search replicates R per arm (>= 2; default 3)")
    cal.add_argument("--trials", type=int, default=2, help="optuna trials per search (default 2)")
    cal.add_argument("--seeds", type=int, default=2, help="evaluation seeds K per replicate (default 2)")
    cal.add_argument("--epochs", type=int, default=3, help="max epochs per training run (default 3)")
    cal.add_argument("--out", default="runs/calibrate", help="where the arms' journals and predictions go")
    cal.add_argument("--device", default="cpu", help="auto, cpu or cuda (default cpu)")
    cal.add_argument("--data-dir", help="data root")
    cal.add_argument("--json", action="store_true", help="print the summary and every repeat as JSON")


def command(args: argparse.Namespace) -> int:
    from fusebench.run.calibrate import CalibrateConfig, calibrate

    result = calibrate(CalibrateConfig(dataset=args.dataset, strategy=args.strategy, out=Path(args.out), size=args.size,
                                       repeats=args.repeats, replicates=args.replicates, trials=args.trials,
                                       seeds=args.seeds, epochs=args.epochs, data_dir=args.data_dir, device=args.device))
    print(json.dumps(result.summary(), indent=2) if args.json else result.text())
    return 0
