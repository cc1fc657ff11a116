"""`fusebench stop RUN_DIR`: end a running `fusebench run` the way `--stop-after` does, without a signal.

Every process of the run starts no new work (no trial, round of batched trials, evaluation seed or
cell) and lets the work in flight end; the run then exits 75 and the same command resumes it, having
lost nothing (bench/core/deadline.py). A signal ends it at once instead and throws away the trials in
flight. `fusebench worker` processes that share the run's storage are not stopped by this: stop them
with their own signal or time box.
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

from fusebench.core import deadline
from fusebench.core.errors import UsageError
from fusebench.core.io import atomic_write_bytes
from fusebench.run import rundir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the --out of the running `fusebench run`")


def command(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    if not (run_dir / "run.json").is_file():
        raise UsageError(f"{run_dir}: not a run directory (no run.json); give the --out of a `fusebench run`")
    holder = rundir.lock_holder(run_dir)
    if holder is None:
        print(f"fusebench: no process is running {run_dir}; nothing to stop")
        return 1
    since = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    atomic_write_bytes(run_dir / deadline.STOP_FILE, f"stop requested at {since}\n".encode())
    print(f"fusebench: asked the run in {run_dir} ({holder}) to stop: it starts no new work and exits "
          f"{deadline.EXIT_CODE} when the work in flight has ended (a trial can take minutes); "
          "re-run its command to resume")
    return 0
