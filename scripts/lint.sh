#!/usr/bin/env bash
# Lint: the GitHub workflows (check-jsonschema against GitHub's schema, zizmor's security audit,
# offline), then ruff and mypy as configured in pyproject.toml. The linters live in a throwaway venv
# (.venv-lint/), never in the project's environment. `scripts/lint.sh mypy` runs mypy only (tox -e type).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if command -v uv >/dev/null 2>&1; then UV=(uv); else
  [ -x .venv-bootstrap/bin/uv ] || { "$PY" -m venv .venv-bootstrap && .venv-bootstrap/bin/python -m pip install -q uv; }
  UV=(.venv-bootstrap/bin/uv)
fi
[ -x .venv-lint/bin/python ] || "${UV[@]}" venv -q --python "$PY" .venv-lint
"${UV[@]}" pip install -q --python .venv-lint/bin/python "check-jsonschema>=0.33" "zizmor>=1.10" "ruff>=0.12" "mypy>=1.16"
if [ "${1:-}" != mypy ]; then
  .venv-lint/bin/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml
  .venv-lint/bin/zizmor --offline --config .github/zizmor.yml .github/workflows/
  .venv-lint/bin/ruff check .
fi
# mypy checks the installed layout: pyproject.toml's package-dir maps bench/ -> fusebench,
# strategies/ -> fusebench.strategies, reports/ -> fusebench.reports, datasets_cfg/ ->
# fusebench.datasets_cfg, so the sources are staged that way in .mypy-src/ (mypy_path) and the
# error paths are mapped back to the repository's files. Third-party packages are not installed in
# .venv-lint/ (ignore_missing_imports): their names type as Any.
stage_mypy_src() {
  rm -rf .mypy-src
  mkdir -p .mypy-src/fusebench/datasets_cfg/suites
  cp -R bench/. .mypy-src/fusebench/
  cp -R strategies .mypy-src/fusebench/strategies
  cp -R reports .mypy-src/fusebench/reports
  cp datasets_cfg/__init__.py .mypy-src/fusebench/datasets_cfg/
  cp datasets_cfg/suites/__init__.py .mypy-src/fusebench/datasets_cfg/suites/
  find .mypy-src -name __pycache__ -type d -prune -exec rm -rf {} +
}
stage_mypy_src
.venv-lint/bin/mypy 2>&1 | sed -e 's#\.mypy-src/fusebench/strategies/#strategies/#g' \
  -e 's#\.mypy-src/fusebench/reports/#reports/#g' -e 's#\.mypy-src/fusebench/datasets_cfg/#datasets_cfg/#g' \
  -e 's#\.mypy-src/fusebench/#bench/#g'
