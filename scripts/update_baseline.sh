#!/usr/bin/env bash
# Regenerate the committed baseline leaderboard (baselines/smoke/) from a fresh smoke run.
# Run it when a change is meant to move the numbers, and commit the result with that change.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/baseline-smoke}
rm -rf "$out"
FUSEBENCH_LOCKED=1 bash scripts/smoke.sh "$out"   # requirements.lock: the versions CI compares against
mkdir -p baselines/smoke
cp "$out/leaderboard.csv" "$out/leaderboard.md" baselines/smoke/
# the machine and versions it was made with: `fusebench compare` prints them beside the current run's, since
# a CPU run's numbers repeat bit for bit on one machine but can move on another CPU (stop 23: 25 of 88 cells)
.venv/bin/python -c 'import sys; from fusebench.reports.compare import write_machine_file; write_machine_file(*sys.argv[1:])' \
  "$out/run.json" baselines/smoke/machine.json
echo "baselines/smoke updated from $out; review and commit it"
