#!/usr/bin/env bash
# The GPU path in one command: install the CUDA build of torch into .venv, run the GPU-marked tests,
# the standard suite and `fusebench throughput` on the GPU, and write the figures under
# reports/published/gpu-<device>/ (leaderboard, report, run.json with wall time per phase,
# throughput.json, the test log). Resumable: re-running continues the same run directory.
#
# Environment:
#   GPU_SH_SUITE      suite to run (default: standard)
#   GPU_SH_OUT        output folder (default: reports/published/gpu-<device slug>)
#   GPU_SH_TORCH_INDEX  wheel index of the CUDA torch build (default: PyPI, whose Linux torch wheels are CUDA builds)
#   GPU_SH_ALLOW_CPU=1  on a machine without CUDA, still run the suite on the CPU (hours); otherwise the
#                     CPU fallback runs the GPU tests (they skip with their reason) and a short CPU
#                     throughput check into a temporary folder, and exits 0 without publishing.
set -euo pipefail
cd "$(dirname "$0")/.."

suite=${GPU_SH_SUITE:-standard}
PY=.venv/bin/python

bash scripts/bootstrap.sh  # .venv + fusebench[test]; pins CPU torch only where nvidia-smi is absent

# the uv that bootstrap.sh used: on PATH, else its private .venv-bootstrap, else `python3 -m uv`
uv_cmd() {
  if command -v uv >/dev/null 2>&1; then uv "$@"
  elif [ -x .venv-bootstrap/bin/uv ]; then .venv-bootstrap/bin/uv "$@"
  else python3 -m uv "$@"; fi
}

has_cuda() { "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; }

if command -v nvidia-smi >/dev/null 2>&1 && ! has_cuda; then
  echo "gpu.sh: nvidia-smi sees a GPU but torch has no CUDA; installing the CUDA build of torch"
  index=()
  if [ -n "${GPU_SH_TORCH_INDEX:-}" ]; then
    index=(--index-url "$GPU_SH_TORCH_INDEX")
  fi
  uv_cmd pip install --python "$PY" --reinstall-package torch "${index[@]}" torch
fi

device=$("$PY" -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")')
slug=$(printf '%s' "$device" | tr '[:upper:]' '[:lower:]' | tr -cs 'a-z0-9' '-' | sed 's/-*$//')
"$PY" -c 'import torch; print("gpu.sh: torch", torch.__version__, "cuda", torch.version.cuda)'

if ! has_cuda; then
  tmp=$(mktemp -d)
  echo "gpu.sh: no CUDA device: CPU fallback (GPU tests report their skip reason; nothing is published)"
  .venv/bin/pytest -q -m gpu -rs tests/test_gpu.py tests/test_finetune_gpu.py | tee "$tmp/gpu-tests.log"
  if [ "${GPU_SH_ALLOW_CPU:-0}" != "1" ]; then
    .venv/bin/fusebench throughput --strategies concat,gmu --batch-sizes 1,64 --repetitions 5 --warmup 2 \
      --device cpu --out "$tmp/throughput.json"
    echo "gpu.sh: CPU fallback done; figures in $tmp (set GPU_SH_ALLOW_CPU=1 to run the $suite suite on the CPU)"
    exit 0
  fi
fi

out=${GPU_SH_OUT:-reports/published/gpu-$slug}
mkdir -p "$out"
echo "gpu.sh: device '$device' → $out"
.venv/bin/pytest -q -m gpu -rs tests/test_gpu.py tests/test_finetune_gpu.py 2>&1 | tee "$out/gpu-tests.log"
.venv/bin/fusebench run --suite "$suite" --out "$out/run" --device auto --jobs "${GPU_SH_JOBS:-1}"
.venv/bin/fusebench report "$out/run" --html
.venv/bin/fusebench throughput --device auto --batch-sizes 1,64,256 --out "$out/throughput.json"
# fine-tuning mode (docs/finetune.md): the whole model's throughput with MiniLM + EfficientNet-Lite0 training,
# and the fine-tuning smoke run (frozen and last:1 rows side by side)
for mode in last:2 full; do
  .venv/bin/fusebench throughput --device auto --encoders "$mode" --strategies concat,gmu,mult,mbt \
    --batch-sizes 32,128 --max-length 64 --out "$out/throughput-finetune-${mode/:/}.json"
done
.venv/bin/fusebench run --suite finetune-smoke --out "$out/finetune-run" --device auto --amp-bf16
cp "$out/run/leaderboard.md" "$out/run/leaderboard.csv" "$out/run/run.json" "$out/"
echo "gpu.sh: done; commit $out (leaderboard, report, throughput.json, run.json with wall time per phase)"
