"""`fusebench stop RUN_DIR`: end a running `fusebench run` the way `--stop-after` does, without a signal.

Every process of the run starts no new work (no trial, round of batched trials, evaluation seed or
cell) and lets the work in flight end; the run then exits 75 and the same command resumes it, having
lost nothing (bench/core/deadline.py). A signal ends it at once instead and throws away the trials in
flight. What is in flight can be long: a round of token-level trials (minutes to ~45 min on a CPU), or
a dataset being built and encoded (the request is seen only after it). `fusebench worker` processes
that share the run's storage are not stopped by it: interrupt them (Ctrl-C; their trials in flight are
retried by the next process).
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
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the directory the running `fusebench run` writes to "
                        "(its --out, or the OUT.N a --new-run run chose)")


def _running_siblings(run_dir: Path) -> list[Path]:
    """`OUT.N` directories beside RUN_DIR that a run holds (what a `--new-run` run writes to)."""
    return sorted(p for p in run_dir.parent.glob(f"{run_dir.name}.*")
                  if p.name[len(run_dir.name) + 1:].isdigit() and rundir.lock_holder(p) is not None)


def command(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    request = run_dir / deadline.STOP_FILE
    try:
        holder = rundir.lock_holder(run_dir)  # first: a run's first moments hold the lock before run.json exists
        if holder is None:
            if siblings := _running_siblings(run_dir):
                print(f"fusebench: no process is running {run_dir}; a --new-run run is writing to "
                      f"{', '.join(map(str, siblings))}: fusebench stop {siblings[-1]}")
                return 1
            if not (run_dir / "run.json").is_file():
                raise UsageError(f"{run_dir}: not a run directory (no run.json); give the --out of a `fusebench run`")
            print(f"fusebench: no process is running {run_dir}; nothing to stop")
            return 1
        since = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        atomic_write_bytes(request, f"stop requested at {since}\n".encode())
        if rundir.lock_holder(run_dir) is None:  # the run ended meanwhile: no stale request for the next one
            request.unlink(missing_ok=True)
            print(f"fusebench: the run in {run_dir} ended before the request; nothing to stop")
            return 1
    except OSError as exc:
        raise UsageError(f"{run_dir}: cannot read its lock or write {request.name} ({exc.strerror or exc}); "
                         "run `fusebench stop` as a user who may write to the run directory") from None
    print(f"fusebench: asked the run in {run_dir} ({holder}) to stop: it starts no new work and exits "
          f"{deadline.EXIT_CODE} when the work in flight has ended (a round of trials or a dataset's encode can "
          "take minutes or more); re-run its command to resume")
    return 0
