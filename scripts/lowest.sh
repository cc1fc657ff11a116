#!/usr/bin/env bash
# The lowest versions pyproject.toml allows for fusebench's direct dependencies, installed and tested
# (issue 9: "dependency lower bounds that really resolve and work").
#
# Resolves `uv pip compile --resolution lowest-direct` (direct dependencies at their lower bounds,
# their own dependencies at whatever those need), installs the result into .venv-lowest/ and runs the
# fast unit tests there. Extra arguments go to pytest. Python 3.11 by default: numpy's lower bound (1.24)
# has no wheels for 3.12+. torch comes as in bootstrap.sh: the pinned CPU build from $PIP_FIND_LINKS,
# else from the PyTorch CPU index.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
VENV=${LOWEST_VENV:-.venv-lowest}
say() { echo "lowest: $*" >&2; }

if command -v uv >/dev/null 2>&1; then UV=(uv); else bash scripts/bootstrap.sh >/dev/null; UV=(.venv-bootstrap/bin/uv); fi
pyver=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
src=()
pin=$(sed -n 's/^torch==//p' constraints-cpu.txt)
if [ -n "${PIP_FIND_LINKS:-}" ] && compgen -G "${PIP_FIND_LINKS}/torch-${pin}-*.whl" >/dev/null; then
  src=(--find-links "$PIP_FIND_LINKS")
else
  src=(--index-strategy unsafe-best-match --extra-index-url "${FUSEBENCH_TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}")
fi
mkdir -p runs
lock=runs/lowest-direct.txt
"${UV[@]}" pip compile -q --python-version "$pyver" --resolution lowest-direct --extra test --extra postgres \
  "${src[@]}" -c constraints-cpu.txt pyproject.toml -o "$lock"
say "resolved $(grep -c '==' "$lock") packages into $lock; direct ones:"
grep -E '^(torch|transformers|datasets|optuna|pandas|pyarrow|numpy|scipy|scikit-learn|pillow|matplotlib|rich|pytest|hypothesis)==' "$lock" | tr '\n' ' ' >&2; echo >&2
[ -x "$VENV/bin/python" ] || "${UV[@]}" venv -q --python "$PY" "$VENV"
"${UV[@]}" pip install -q --python "$VENV/bin/python" "${src[@]}" -r "$lock"
"${UV[@]}" pip install -q --python "$VENV/bin/python" --no-deps -e .
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
# The fast unit tests only (`slow`: whole CLI runs, kill -9 and disk-full replays, ~20 min of CI on their own,
# which test fusebench's recovery paths, not the dependencies' APIs that a lower bound can break; docs/testing.md).
exec "$VENV/bin/pytest" -q -m "not integration and not perf and not gpu and not slow" -p no:cacheprovider "$@"
