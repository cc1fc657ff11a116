#!/usr/bin/env bash
# The standard suite at full scale on this machine's CPU (issue 14 §3), resumable: run it again after
# any interruption (kill, reboot, end of a session) and it goes on where it stopped — encode
# checkpoints, the optuna journal and results.jsonl keep every finished chunk, trial and record.
#   1. encode every task (--prepare-only; features are cached once, under $FUSEBENCH_CACHE);
#   2. the sweep; 3. the report; 4. publish leaderboard, report, run.json (wall time per phase) and
#      the status (cells done, encoding rates, measured cell time, time left) to
#      reports/published/standard-cpu/.
# `scripts/standard_cpu.sh status` only publishes the status of the run so far.
# Meant for the background: `nohup nice -n 19 bash scripts/standard_cpu.sh > standard-cpu.out 2>&1 &`.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${STANDARD_CPU_OUT:-runs/standard-cpu}
PUB=reports/published/standard-cpu
FUSEBENCH_LOCKED=1 bash scripts/bootstrap.sh >/dev/null  # requirements.lock: library versions are part of the cache keys
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
mkdir -p "$PUB"
publish_status() {
  .venv/bin/fusebench timing status "$OUT" --json "$PUB/status.json" | tee "$PUB/status.md"
}
if [ "${1:-}" = status ]; then publish_status; exit 0; fi
.venv/bin/fusebench run --suite standard --prepare-only --device cpu --out "$OUT" --log-file "$OUT.prepare.log"
.venv/bin/fusebench run --suite standard --device cpu --out "$OUT" --log-file "$OUT.log"
.venv/bin/fusebench report "$OUT" --html
cp "$OUT/leaderboard.md" "$OUT/leaderboard.csv" "$OUT/run.json" "$OUT/report.html" "$PUB/"
if [ -d "$OUT/plots" ]; then cp -R "$OUT/plots" "$PUB/"; fi
publish_status
echo "standard_cpu.sh: done; commit $PUB"
