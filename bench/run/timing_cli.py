"""`fusebench timing record|compare|status RUN_DIR`: keep the time-to-leaderboard history and check a run against it.

The history is a CSV (default `benchmarks/time_to_leaderboard.csv` in the current directory, the
committed file when run from the checkout); see bench/results/timing_history.py for its columns and
the slowdown rule.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fusebench.core.errors import UsageError

DEFAULT_HISTORY = Path("benchmarks") / "time_to_leaderboard.csv"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="timing_command", required=True)
    rec = sub.add_parser("record", help="append a finished run's wall times (run.json) to the history")
    cmp = sub.add_parser("compare", help="print a run next to the history of its machine and suite; flag a slowdown")
    for p in (rec, cmp):
        p.add_argument("run_dir", metavar="RUN_DIR", help="directory of a finished `fusebench run`")
        p.add_argument("--history", default=str(DEFAULT_HISTORY), help=f"history CSV (default {DEFAULT_HISTORY})")
    cmp.add_argument("--factor", type=float, default=1.5, help="slowdown when total > FACTOR × median (default 1.5)")
    cmp.add_argument("--last", type=int, default=5, help="median over the last N rows of this machine+suite (default 5)")
    cmp.add_argument("--fail", action="store_true", help="exit 1 on a slowdown (default: print a warning, exit 0)")
    st = sub.add_parser("status", help="where a run (running, stopped or finished) stands: cells done per task, "
                        "phases so far, encoding rates, measured cell time and the time left")
    st.add_argument("run_dir", metavar="RUN_DIR", help="directory of a `fusebench run` (its --out)")
    st.add_argument("--json", metavar="FILE", help="also write the status as JSON to FILE")
    st.add_argument("--probe", metavar="PROBE_DIR", action="append",
                    help="a short run of the same tasks on this machine (few trials, one replicate, a strategy or two "
                         "per task): estimate each task's remaining cells at its rates too, and check the estimate "
                         "on the cells both runs finished; repeatable (their cells pool)")


def command(args: argparse.Namespace) -> int:
    if args.timing_command == "status":
        import json

        from fusebench.core.io import atomic_write_bytes
        from fusebench.run.status import format_status, run_status

        status = run_status(Path(args.run_dir), [Path(p) for p in args.probe or []])
        print(format_status(status))
        if args.json:
            atomic_write_bytes(Path(args.json), json.dumps(status, indent=2).encode())
        return 0
    from fusebench.results import timing_history as th

    run_dir, history = Path(args.run_dir), Path(args.history)
    row = th.row_from_run(run_dir)
    if args.timing_command == "record":
        th.append_row(history, row)
        print(f"fusebench: {run_dir} ({row['suite']}, {row['total_s']} s on {row['cpu']} × {row['cores']}) "
              f"recorded in {history}")
        return 0
    if args.factor <= 1.0 or args.last < 1:
        raise UsageError(f"--factor must be > 1 and --last >= 1, got {args.factor} and {args.last}")
    result = th.compare(row, th.read_history(history), args.factor, args.last)
    print(th.table(row, result.peers))
    print(("WARNING: " if result.slowdown else "") + result.message())
    return 1 if result.slowdown and args.fail else 0
