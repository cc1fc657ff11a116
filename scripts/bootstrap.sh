#!/usr/bin/env bash
# Create .venv and install fusebench with its test extras. Idempotent and fast when up to date.
#
# Works with nothing but Python >= 3.10 and the default package index:
# - uv: the one on PATH, else one installed into a private venv (.venv-bootstrap/), never a global
#   `pip install` (system Pythons that block those, PEP 668, are fine);
# - torch on a machine without an NVIDIA GPU: the pinned CPU build (constraints-cpu.txt) when a wheel
#   folder ($PIP_FIND_LINKS) has it, else the CPU build from the PyTorch CPU index, else plain `torch`
#   from the default index, so the install never fails for want of the pinned wheel.
# FUSEBENCH_LOCKED=1 installs the exact versions of requirements.lock (what the committed baseline used).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
say() { echo "bootstrap: $*" >&2; }

if command -v uv >/dev/null 2>&1; then
  UV=(uv)
elif "$PY" -m uv --version >/dev/null 2>&1; then
  UV=("$PY" -m uv)
else
  if [ ! -x .venv-bootstrap/bin/uv ]; then
    say "installing uv into .venv-bootstrap/ (no global pip install)"
    "$PY" -m venv .venv-bootstrap || { say "'$PY -m venv' failed: install your OS's venv package (Debian: python3-venv)"; exit 2; }
    .venv-bootstrap/bin/python -m pip install -q --disable-pip-version-check uv
  fi
  UV=(.venv-bootstrap/bin/uv)
fi
if [ ! -x .venv/bin/python ]; then
  "${UV[@]}" venv -q --python "$PY" .venv
fi
links=()
if [ -n "${PIP_FIND_LINKS:-}" ]; then
  links=(--find-links "$PIP_FIND_LINKS")
fi
reqs=(-e ".[test,postgres]")
if [ "${FUSEBENCH_LOCKED:-0}" = 1 ]; then
  reqs=(-r requirements.lock -e ".[test,postgres]" --no-deps)
fi
install() { "${UV[@]}" pip install -q --python .venv/bin/python --compile-bytecode "${links[@]}" "$@" "${reqs[@]}"; }

if command -v nvidia-smi >/dev/null 2>&1; then
  install
  exit 0
fi
# No NVIDIA GPU: the CPU torch build, in order of preference.
pin=$(sed -n 's/^torch==//p' constraints-cpu.txt 2>/dev/null || true)
if [ -n "${PIP_FIND_LINKS:-}" ] && compgen -G "${PIP_FIND_LINKS}/torch-${pin}-*.whl" >/dev/null; then
  install -c constraints-cpu.txt
elif install --index-strategy unsafe-best-match --extra-index-url "${FUSEBENCH_TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}" \
     -c <(echo "torch==${pin%%+*}+cpu") 2>/dev/null; then
  say "CPU torch ${pin%%+*}+cpu from the PyTorch CPU index"
else
  say "pinned CPU torch not available here: installing plain torch from the default index"
  install
fi
