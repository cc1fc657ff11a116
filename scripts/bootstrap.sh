#!/usr/bin/env bash
# Create .venv and install fusebench with its test extras. Idempotent and fast when up to date.
# On a machine without an NVIDIA GPU the CPU torch wheel is pinned (constraints-cpu.txt), so the
# install never pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! command -v uv >/dev/null 2>&1; then
  "$PY" -m pip install -q uv
fi
UV="$(command -v uv || echo "$PY -m uv")"
if [ ! -x .venv/bin/python ]; then
  $UV venv -q --python "$PY" .venv
fi
constraints=()
if ! command -v nvidia-smi >/dev/null 2>&1 && [ -f constraints-cpu.txt ]; then
  constraints=(-c constraints-cpu.txt)
fi
links=()
if [ -n "${PIP_FIND_LINKS:-}" ]; then
  links=(--find-links "$PIP_FIND_LINKS")
fi
$UV pip install -q --python .venv/bin/python --compile-bytecode "${links[@]}" "${constraints[@]}" -e ".[test,postgres]"
