#!/usr/bin/env bash
# Lint: the GitHub workflows (check-jsonschema against GitHub's schema, zizmor's security audit,
# offline), then ruff and mypy as configured in pyproject.toml. The linters live in a throwaway venv
# (.venv-lint/), never in the project's environment.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if command -v uv >/dev/null 2>&1; then UV=(uv); else
  [ -x .venv-bootstrap/bin/uv ] || { "$PY" -m venv .venv-bootstrap && .venv-bootstrap/bin/python -m pip install -q uv; }
  UV=(.venv-bootstrap/bin/uv)
fi
[ -x .venv-lint/bin/python ] || "${UV[@]}" venv -q --python "$PY" .venv-lint
"${UV[@]}" pip install -q --python .venv-lint/bin/python "check-jsonschema>=0.33" "zizmor>=1.10" "ruff>=0.12" "mypy>=1.16"
.venv-lint/bin/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml
.venv-lint/bin/zizmor --offline --config .github/zizmor.yml .github/workflows/
if [ "${FUSEBENCH_LINT_CODE:-0}" = 1 ]; then  # ruff/mypy: on once the lead's clean-up pass has landed
  .venv-lint/bin/ruff check .
  .venv-lint/bin/mypy
fi
