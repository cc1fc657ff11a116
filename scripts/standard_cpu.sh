#!/usr/bin/env bash
# The standard suite at full scale on this machine's CPU (issue 14 §3), resumable: run it again after
# any interruption (kill, reboot, end of a session) and it goes on where it stopped — encode
# checkpoints, the optuna journal and results.jsonl keep every finished chunk, trial and record.
#   1. the sweep, task by task, cheapest first: each task is encoded when the sweep reaches it (features
#      are cached once, under $FUSEBENCH_CACHE). STANDARD_CPU_PREPARE=1 encodes every task first
#      (--prepare-only), as runs 1-3 did: 1-1.5 h before the first cell, lost again wherever the
#      machine (and its cache) does not outlive the session;
#   2. the report; 3. publish leaderboard, report, run.json (wall time per phase) and
#      the status (cells done, encoding rates, measured cell time, time left) to
#      reports/published/standard-cpu/.
# `scripts/standard_cpu.sh status` publishes the run so far: the leaderboard and report of the finished
# cells (made on a copy of the run directory) and the status; `save` does too.
# Meant for the background: `nohup nice -n 19 bash scripts/standard_cpu.sh > standard-cpu.out 2>&1 &`.
# `pause` / `resume` stop and continue the running sweep while another heavy job runs, `nice` lowers its
# priority instead (see below). `stop` ends it with nothing lost (`fusebench stop`: no new trial, seed or
# cell; the work in flight ends, minutes on token cells; then save): a SIGTERM throws a round of trials away.
# Across machines: `scripts/standard_cpu.sh save` (the sweep stopped first) writes the run's state (optuna
# journal, records, stored seeds, predictions; no locks) to $STANDARD_CPU_PUB/run-state/ (default
# reports/published/standard-cpu), to be committed; a later start (or `restore`) with no run at
# $STANDARD_CPU_OUT restores it there, and the sweep resumes. The
# machines of this project do not keep files between sessions (stop 16 found run 3's directory gone).
# The state is a plain tree, not a tarball, so that git stores each file once: a finished cell's
# predictions (MBs each on IMDB) never change, and the append-only journal is cut into 4 MiB pieces,
# each gzipped deterministically (-n), so a save adds only its new and last piece. A tarball re-committed
# the whole run every session (run-state.tar.gz until stop 27; the commits before read it with their own script).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${STANDARD_CPU_OUT:-runs/standard-cpu}
PUB=${STANDARD_CPU_PUB:-reports/published/standard-cpu}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
mkdir -p "$PUB"
publish_status() {  # $STANDARD_CPU_PROBES: probe run directories (space-separated) for `timing status --probe`
  local probes=()
  for p in ${STANDARD_CPU_PROBES:-}; do probes+=(--probe "$p"); done
  .venv/bin/fusebench timing status "$OUT" "${probes[@]}" --json "$PUB/status.json" | tee "$PUB/status.md"
}
publish_report() {  # leaderboard and HTML report of what $1 holds (the finished cells)
  .venv/bin/fusebench report "$1" --html -q
  cp "$1/leaderboard.md" "$1/leaderboard.csv" "$1/run.json" "$1/report.html" "$PUB/"
  if [ -d "$1/plots" ]; then rm -rf "$PUB/plots"; cp -R "$1/plots" "$PUB/"; fi
}
TREE=$PUB/run-state
PIECE=4M  # of the journal: a piece once full never changes, so git keeps it once
# `pause` / `resume`: SIGSTOP / SIGCONT the running sweep at $OUT and every process under it, for the
# minutes another heavy job (the test suite) needs the machine to itself; a stopped process counts no
# CPU seconds. The sweep is the holder of its run directory's flock (bench/run/rundir.py), whose pid
# the lock file names.
# `nice`: the lighter way, used beside CI since stop 27: renice the sweep and its processes to 19 (the
# cell processes it starts later inherit it). It then runs on what the other job leaves idle: the
# test step took 33 min beside a niced sweep, against 25-47 min with it paused, and the sweep went on.
# Its budget is not cut: the search cap counts CPU seconds, which a neighbour changes little (README,
# "The cap"; under the old wall-clock cap a round of 5 trials took ~4x as long beside the tests).
sweep_tree() {  # the running sweep's pid and its descendants' pids, parent first; exit 1 if none runs
  local pid i=0 tree
  pid=$(sed -n 's/^pid \([0-9][0-9]*\) .*/\1/p' "$OUT/.fusebench.lock" 2>/dev/null || true)
  [ -n "$pid" ] && ! flock -n "$OUT/.fusebench.lock" true 2>/dev/null || return 1
  tree=("$pid")
  while [ "$i" -lt "${#tree[@]}" ]; do
    # shellcheck disable=SC2207
    tree+=($(pgrep -P "${tree[$i]}" || true)); i=$((i + 1))
  done
  echo "${tree[@]}"
}
if [ "${1:-}" = pause ] || [ "${1:-}" = resume ]; then
  tree=$(sweep_tree) || { echo "standard_cpu.sh: no sweep is running at $OUT" >&2; exit 2; }
  if [ "$1" = pause ]; then
    for p in $tree; do kill -STOP "$p" 2>/dev/null || true; done  # the parent first: it sees no child stop
    echo "standard_cpu.sh: paused the sweep at $OUT (pids $tree); resume it with: $0 resume"
  else
    for p in $(echo "$tree" | tr ' ' '\n' | tac); do kill -CONT "$p" 2>/dev/null || true; done  # children first
    echo "standard_cpu.sh: resumed the sweep at $OUT (pids $tree)"
  fi
  exit 0
fi
if [ "${1:-}" = stop ]; then
  .venv/bin/fusebench stop "$OUT" || exit $?
  # a paused (SIGSTOPped) sweep sees the request only once it runs again
  for p in $(sweep_tree 2>/dev/null || true); do
    case "$(ps -o stat= -p "$p" 2>/dev/null)" in
      T*) echo "standard_cpu.sh: the sweep is paused: it stops only once resumed ($0 resume)" >&2; break ;;
    esac
  done
  exit 0
fi
if [ "${1:-}" = nice ]; then
  tree=$(sweep_tree) || { echo "standard_cpu.sh: no sweep is running at $OUT" >&2; exit 2; }
  # shellcheck disable=SC2086
  renice -n 19 -p $tree >/dev/null || exit 1
  echo "standard_cpu.sh: the sweep at $OUT runs at nice 19 (pids $tree); it stays so until it exits"
  exit 0
fi
if [ "${1:-}" = save ]; then
  [ -f "$OUT/run.json" ] || { echo "standard_cpu.sh: no run at $OUT to save" >&2; exit 2; }
  # a running `fusebench run` holds an flock of its run directory's .fusebench.lock (bench/run/rundir.py),
  # whatever spelling of the path it was given; the command-line match covers a system without flock(1)
  if { [ -f "$OUT/.fusebench.lock" ] && command -v flock >/dev/null 2>&1 && ! flock -n "$OUT/.fusebench.lock" true; } ||
     pgrep -f "fusebench run --suite standard .*--out $OUT( |$)" >/dev/null; then
    echo "standard_cpu.sh: the sweep at $OUT is running: stop it first ($0 stop, and wait for it to exit), then save" >&2; exit 2
  fi
  rm -rf "$TREE.tmp" && mkdir -p "$TREE.tmp"
  # every file but the journal and the locks as it is (a lock names this machine's processes and paths),
  # and but the report (leaderboard, Pareto table, plots, report.html: made again from the records, and
  # published beside the state; ~1 MB that every save would change)
  tar -C "$OUT" --exclude=./optuna.journal --exclude=optuna.journal.lock --exclude=.fusebench.lock --exclude=./stop-requested \
    --exclude=./leaderboard.md --exclude=./leaderboard.csv --exclude=./pareto.md --exclude=./pareto.csv \
    --exclude=./plots --exclude=./report.html -cf - . | tar -C "$TREE.tmp" -xf -
  if [ -f "$OUT/optuna.journal" ]; then
    split -b "$PIECE" -d -a 4 "$OUT/optuna.journal" "$TREE.tmp/optuna.journal.piece."
    for p in "$TREE.tmp"/optuna.journal.piece.*; do [ -e "$p" ] && gzip -n -6 "$p"; done
    (cd "$OUT" && sha256sum optuna.journal) > "$TREE.tmp/optuna.journal.sha256"
  fi
  rm -rf "$TREE" && mv "$TREE.tmp" "$TREE"
  echo "standard_cpu.sh: saved $OUT to $TREE ($(du -sh "$TREE" | cut -f1)); commit it (git add -A $PUB)"
  [ -s "$OUT/results.jsonl" ] || exit 0  # no record yet: no report to publish
  # and publish the leaderboard, report and status of the state just saved, beside it (the `status` verb
  # below): a sweep stopped by a signal exits before it publishes, and stop 33 committed a run of 26
  # finished cells beside the leaderboard and status of 25 (tests/test_standard_cpu_state.py checks this)
  set -- status
fi
restore() {  # a saved run, where $OUT holds none
  local sums
  if [ ! -f "$OUT/run.json" ] && [ -f "$TREE/run.json" ]; then
    # unpacked beside, then moved into place: a restore cut short leaves no half run that looks whole
    rm -rf "$OUT.restoring" && mkdir -p "$OUT.restoring"
    tar -C "$TREE" --exclude='./optuna.journal.piece.*' --exclude=./optuna.journal.sha256 -cf - . | tar -C "$OUT.restoring" -xf -
    # the pieces in order, then the whole checked (a piece missing, cut short or not gzip fails the check)
    if [ -f "$TREE/optuna.journal.sha256" ] && ! {
        : > "$OUT.restoring/optuna.journal"
        for p in "$TREE"/optuna.journal.piece.*.gz; do
          [ ! -e "$p" ] || gzip -dc "$p" >> "$OUT.restoring/optuna.journal" 2>/dev/null || true
        done
        sums=$(cd "$TREE" && pwd)/optuna.journal.sha256  # absolute: $PUB is relative to the checkout by default
        (cd "$OUT.restoring" && sha256sum -c --quiet "$sums" >/dev/null 2>&1)
      }; then
      echo "standard_cpu.sh: the journal restored from $TREE does not match its optuna.journal.sha256 (a piece missing or damaged); nothing restored" >&2
      rm -rf "$OUT.restoring"; exit 2
    fi
    if [ ! -e "$OUT" ]; then
      mv "$OUT.restoring" "$OUT"
    else  # a folder without run.json: run.json last, so that only a whole copy counts as a run
      mv "$OUT.restoring/run.json" "$OUT.run.json" && cp -a "$OUT.restoring/." "$OUT/" && mv "$OUT.run.json" "$OUT/run.json"
      rm -rf "$OUT.restoring"
    fi
    echo "standard_cpu.sh: restored the run from $TREE into $OUT"
  fi
}
if [ "${1:-}" = restore ]; then restore; exit 0; fi
[ "${1:-}" = status ] || restore
FUSEBENCH_LOCKED=1 bash scripts/bootstrap.sh >/dev/null  # requirements.lock: library versions are part of the cache keys
if [ "${1:-}" = status ]; then
  # while the sweep runs: the report of the cells finished so far, made on a copy of the run directory
  # (the sweep keeps writing its own), then the status
  if [ -s "$OUT/results.jsonl" ]; then
    SNAP="$OUT.snapshot"  # beside the run: the report names this path
    rm -rf "$SNAP" && mkdir -p "$SNAP"
    trap 'rm -rf "$SNAP"' EXIT
    cp -R "$OUT/." "$SNAP/"
    publish_report "$SNAP"
  fi
  publish_status
  exit 0
fi
if [ "${STANDARD_CPU_PREPARE:-0}" = 1 ]; then
  .venv/bin/fusebench run --suite standard --prepare-only --device cpu --out "$OUT" --log-file "$OUT.prepare.log"
fi
# $STANDARD_CPU_JOBS cell processes (default 1). Each trains on one thread (small fusion models run
# faster on one than on two), so one process uses one core; 2 uses both on an otherwise idle machine
# (jobs is not part of the run's identity: a run resumes under another value). Each process holds a
# copy of the dataset being swept: watch the memory on IMDB's token features.
# STANDARD_CPU_STOP_AFTER (e.g. 2h30m): `fusebench run --stop-after`, so that a session's end finds the
# sweep stopped with nothing in flight (a SIGTERM throws away a round of trials per running study)
stop=(); [ -n "${STANDARD_CPU_STOP_AFTER:-}" ] && stop=(--stop-after "$STANDARD_CPU_STOP_AFTER")
rc=0
.venv/bin/fusebench run --suite standard --device cpu --out "$OUT" --log-file "$OUT.log" --jobs "${STANDARD_CPU_JOBS:-1}" \
  "${stop[@]}" || rc=$?
if [ "$rc" -eq 75 ]; then
  echo "standard_cpu.sh: stopped (STANDARD_CPU_STOP_AFTER=${STANDARD_CPU_STOP_AFTER:-} or $0 stop) with nothing in flight; save it, and the same command resumes"
elif [ "$rc" -ne 0 ]; then
  exit "$rc"
fi
publish_report "$OUT"
publish_status
echo "standard_cpu.sh: done; commit $PUB"
