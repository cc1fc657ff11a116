#!/usr/bin/env bash
# The test suite: unit, registry-generated contract tests and integration tests on the real
# bundle (never the network). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/system_deps.sh
bash scripts/bootstrap.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
exec .venv/bin/pytest "$@"
