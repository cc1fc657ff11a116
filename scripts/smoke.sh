#!/usr/bin/env bash
# The main job: the smoke suite (all tasks × all strategies) on the bundled data.
# Usage: bash scripts/smoke.sh [OUT_DIR] [extra fusebench run flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
out=${1:-runs/smoke}
shift || true
.venv/bin/fusebench run --suite smoke --out "$out" "$@"
