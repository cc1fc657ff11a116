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
echo "baselines/smoke updated from $out; review and commit it"
