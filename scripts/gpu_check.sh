#!/usr/bin/env bash
# The GPU run of fused_rnn: build, kernel tests, anchor timings, parity, grid, sanitizer -- on a
# fresh GPU machine without network (torch + CUDA, triton, nvcc; python3), inside one budget.
#
#   FUSED_RNN_COMMIT=<hash> scripts/gpu_check.sh [OUT_DIR]   (OUT_DIR default: $OUT, else ./gpu_out)
#   scripts/gpu_check.sh --dry-run [OUT_DIR]   every step in order on a CPU, stand-ins for the GPU
#
# With this workplace's device tool: run(command="FUSED_RNN_COMMIT=$(git rev-parse --short HEAD)
# scripts/gpu_check.sh", timeout_s=600) -- with the hash written out, since .git does not travel.
#
# What comes back: OUT_DIR holds three files only (at most 8 come back from $OUT): summary.md,
# status.tsv and gpu_check.tgz, the archive of the work folder (every log, junit xml and CSV).
# All three are rewritten after EVERY step, so a run stopped anywhere (a step's limit, the
# device call's timeout) still returns everything finished before. Benchmarks append their CSV
# rows as each case finishes. The work folder is $GPU_CHECK_WORK, else a fresh mktemp -d.
#
# Steps, in order; each runs under its own limit (`timeout -s INT`: pytest still writes its
# report and junit, the benchmarks their last row) and a failed step never stops the later
# ones. Estimates on an H200 (16 host cores) are guesses from work measured on the 2-core CPU
# machine, not measurements; the device's own start costs minutes more before the script runs.
#   step      limit  H200 estimate  what
#   env         60s   ~10 s   versions, TF32 flags, device, pytest plugins (-> env.sh)
#   build      300s   ~60-120 s  pip install --no-deps --no-build-isolation --no-index -e .
#                              (FUSED_RNN_REQUIRE_CUDA=1; ~63 s of single-core compile work,
#                              in parallel under MAX_JOBS), then a check that every op has a
#                              CUDA kernel
#   kernels    180s   ~60-120 s  pytest -m gpu: test_cuda_compile, test_triton_kernels, test_ops
#                              (cold Triton compiles), several workers
#   anchors    180s   ~60-120 s  python -m benchmarks.paths: TARGETS.md anchors (LSTM/GRU H=768
#                              B=16 T=1024 bf16/fp16, fastrnns fp32) on every CUDA/Triton path
#                              and on cuDNN (fp32 with TF32 off and on), each row checked
#   parity     150s   ~40-90 s   pytest -m gpu tests/test_parity.py -k full_shapes
#   gpu_tests  150s   ~60-150 s  pytest -m gpu: every other test file (module-level GPU tests)
#   grid      rest    the time left, less the sanitizer's reserve: benchmarks.run --full
#   sanitizer  150s   ~40-90 s   compute-sanitizer memcheck + racecheck, one tiny persistent
#                              forward + backward per cell, filtered to our kernels
# A step's limit is the smaller of its own and what is left of GPU_CHECK_TOTAL_S (default 480)
# after the sanitizer's reserve (120 s); with under 10 s it is skipped. Steps may overrun their
# limit by the 20 s that `timeout -k` grants after SIGINT, so the script ends within ~510 s.
# Device time: the machine's start (1-3 min) + this budget + transfers, ~11-12 of the 15
# minutes a task gets: a second full run does not fit; GPU_CHECK_ONLY reruns single steps while
# the machine is still warm (it stays so only 30 s after a call).
# The dry run takes ~35 s of CPU time on the 2-core CPU machine (34 s user measured; 2 min 20 s
# of wall time beside other work); its stand-ins: the ops-registration check of CI's own build,
# a few CPU tests per pytest step, benchmarks.paths --tiny on the CPU, a 2-case CPU grid, the
# sanitizer's calls on the cpp backend without the tool.
#
# Environment: PYTHON (else python3, else python: the first that imports torch), GPU_CHECK_TOTAL_S,
# GPU_CHECK_LIMIT_<STEP> (e.g. GPU_CHECK_LIMIT_ANCHORS=20: that step's limit), GPU_CHECK_ONLY
# (comma-separated steps to run, e.g. "kernels,sanitizer" on a warm machine that kept its
# build), GPU_CHECK_WORKERS (pytest-xdist workers, default min(8, cores)), GPU_CHECK_WORK,
# FUSED_RNN_COMMIT (the commit written in the summary and the CSVs), TORCH_CUDA_ARCH_LIST
# (default: the device's own, e.g. 9.0).
# Exit status: 0 when every step was ok, else 1.
set -u -o pipefail

DRY=${GPU_CHECK_DRY_RUN:-0}
if [ "${1:-}" = "--dry-run" ]; then
  DRY=1
  shift
fi
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT_DIR=${1:-${OUT:-$ROOT/gpu_out}}
mkdir -p "$OUT_DIR" && OUT_DIR=$(cd "$OUT_DIR" && pwd) || exit 2
if [ -n "${GPU_CHECK_WORK:-}" ]; then
  mkdir -p "$GPU_CHECK_WORK" && WORK=$(cd "$GPU_CHECK_WORK" && pwd) || exit 2
else
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/fused_rnn_gpu_check.XXXXXX") || exit 2
fi
case "$WORK/" in
  "$OUT_DIR"/*)
    echo "GPU_CHECK_WORK must lie outside OUT_DIR (only a few files come back from it)" >&2
    exit 2
    ;;
esac
ARCHIVE=$OUT_DIR/gpu_check.tgz
STATUS=$WORK/status.tsv
START=$(date +%s)

export PYTHONUNBUFFERED=1
# No network on the GPU machine: pip must not try an index.
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
if [ -z "${FUSED_RNN_COMMIT:-}" ]; then
  FUSED_RNN_COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
  if [ "$FUSED_RNN_COMMIT" != unknown ] && ! git diff --quiet HEAD 2>/dev/null; then
    FUSED_RNN_COMMIT="$FUSED_RNN_COMMIT-dirty"
  fi
fi
export FUSED_RNN_COMMIT

resolve_python() {
  if [ -n "${PYTHON:-}" ]; then
    echo "$PYTHON"
    return
  fi
  local p
  for p in python3 python; do
    if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import torch' >/dev/null 2>&1; then
      echo "$p"
      return
    fi
  done
  echo python3
}
PY=$(resolve_python)

if [ "$DRY" = 1 ]; then
  MODE=dry-run
  TOTAL_S=${GPU_CHECK_TOTAL_S:-600}
  MIN_STEP=3
  SANITIZER_RESERVE=20
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
else
  MODE=gpu
  TOTAL_S=${GPU_CHECK_TOTAL_S:-480}
  MIN_STEP=10
  SANITIZER_RESERVE=120
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
  export MAX_JOBS=${MAX_JOBS:-16}
  export FUSED_RNN_REQUIRE_CUDA=1
fi
{
  echo "MODE=$MODE"
  echo "COMMIT=$FUSED_RNN_COMMIT"
  echo "STARTED=$(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "TOTAL_S=$TOTAL_S"
  echo "PY=$PY"
} >"$WORK/meta.env"
printf 'step\tstatus\texit\tseconds\tlimit\tnote\n' >"$STATUS"

left() { echo $((TOTAL_S - ($(date +%s) - START))); }
# limit OWN [RESERVE]: OWN seconds, or what is left after RESERVE seconds kept for later steps.
limit() {
  local l=$(($(left) - ${2:-0}))
  [ "$1" -lt "$l" ] && l=$1
  echo "$l"
}
selected() { [ -z "${GPU_CHECK_ONLY:-}" ] || [[ ",$GPU_CHECK_ONLY," == *",$1,"* ]]; }

# refresh STEP: summary.md, status.tsv and the archive, rewritten in OUT_DIR (archive written
# aside, then moved, so a kill mid-write leaves the previous one whole).
refresh() {
  if ! "$PY" "$ROOT/scripts/gpu_summary.py" "$WORK" >"$WORK/summary.md.part" 2>"$WORK/summary_error.log"; then
    { echo "# fused_rnn GPU check: the summary builder failed (summary_error.log)"; echo; cat "$STATUS"; } \
      >"$WORK/summary.md.part"
  fi
  mv -f "$WORK/summary.md.part" "$WORK/summary.md"
  cp -f "$WORK/summary.md" "$STATUS" "$OUT_DIR/"
  tar czf "$ARCHIVE.part" -C "$WORK" . && mv -f "$ARCHIVE.part" "$ARCHIVE"
  echo "--- refreshed summary.md, status.tsv and $(basename "$ARCHIVE") after $1"
}

record() { # NAME STATUS EXIT SECONDS LIMIT NOTE
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$STATUS"
}

# SIGINT is ignored in processes that a non-interactive shell starts in the background; the
# steps' `timeout -s INT` must reach them, so each command starts with it restored.
UNIGNORE_INT='import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execvp(sys.argv[1], sys.argv[1:])'

# run_step NAME LIMIT CMD...: CMD under its limit, output in NAME.log; status ok | failed |
# timeout | empty (pytest collected nothing) | skipped; then refresh.
run_step() {
  local name=$1 lim=$2
  shift 2
  local var
  var="GPU_CHECK_LIMIT_$(echo "$name" | tr '[:lower:]' '[:upper:]')"
  lim=${!var:-$lim}
  if ! selected "$name"; then
    record "$name" skipped "" 0 "$lim" "not in GPU_CHECK_ONLY"
  elif [ "$lim" -lt "$MIN_STEP" ]; then
    record "$name" skipped "" 0 "$lim" "no time left"
    echo "=== $name: skipped, no time left"
  else
    echo "=== [$(($(date +%s) - START))s] $name (limit ${lim}s): $*"
    local t0 rc st note=""
    t0=$(date +%s)
    timeout -s INT -k 20 "$lim" "$PY" -c "$UNIGNORE_INT" "$@" >"$WORK/$name.log" 2>&1
    rc=$?
    case $rc in
      0) st=ok ;;
      124 | 137) st=timeout note="stopped by its ${lim}s limit" ;;
      5) st=empty note="pytest collected no test" ;;
      *) st=failed ;;
    esac
    record "$name" "$st" "$rc" "$(($(date +%s) - t0))" "$lim" "$note"
    tail -n 6 "$WORK/$name.log"
    echo "=== $name: $st (exit $rc) after $(($(date +%s) - t0))s; $(left)s of the budget left"
  fi
  refresh "$name"
}

on_signal() {
  record "script" stopped "" "$(($(date +%s) - START))" "$TOTAL_S" "gpu_check.sh got a signal"
  refresh "signal"
  exit 1
}
trap on_signal INT TERM

PYTEST_ARGS=()
# pytest_args NAME: the flags of every pytest step (per-test timeout and workers only where the
# plugin is installed; -v names each test as it ends, so a stopped run still lists its failures).
pytest_args() {
  PYTEST_ARGS=(-v -rfE -p no:cacheprovider --continue-on-collection-errors
    --maxfail="${GPU_CHECK_MAXFAIL:-30}" --junitxml="$WORK/$1.xml")
  if [ "${HAS_XDIST:-0}" = 1 ] && [ "$WORKERS" -gt 1 ]; then PYTEST_ARGS+=(-n "$WORKERS"); fi
  if [ "${HAS_TIMEOUT:-0}" = 1 ]; then PYTEST_ARGS+=(--timeout="${GPU_CHECK_TEST_TIMEOUT:-120}"); fi
}

# Test files, passed explicitly (one broken module must not stop the others).
existing() { local f; for f in "$@"; do [ -f "$f" ] && echo "$f"; done; }
mapfile -t KERNEL_TESTS < <(existing tests/test_cuda_compile.py tests/test_triton_kernels.py tests/test_ops.py)
mapfile -t OTHER_TESTS < <(for f in tests/test_*.py; do
  case " ${KERNEL_TESTS[*]} tests/test_parity.py tests/test_gpu_script.py " in
    *" $f "*) ;;
    *) echo "$f" ;;
  esac
done)

echo "gpu_check.sh ($MODE): python $PY, commit $FUSED_RNN_COMMIT, budget ${TOTAL_S}s, work $WORK, out $OUT_DIR"

# -- env ----------------------------------------------------------------------------------------
if [ "$DRY" = 1 ]; then
  run_step env 60 "$PY" scripts/gpu_env.py "$WORK/env.sh"
else
  run_step env 60 bash -c 'nvidia-smi -L; nvidia-smi; nvcc --version; compute-sanitizer --version | head -n 3;
    "$0" scripts/gpu_env.py "$1"' "$PY" "$WORK/env.sh"
fi
HAS_XDIST=0 HAS_TIMEOUT=0 ARCH="" NPROC=1
# shellcheck disable=SC1091
[ -f "$WORK/env.sh" ] && . "$WORK/env.sh"
WORKERS=${GPU_CHECK_WORKERS:-$((NPROC < 8 ? NPROC : 8))}
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ] && [ -n "$ARCH" ]; then export TORCH_CUDA_ARCH_LIST=$ARCH; fi

# -- build --------------------------------------------------------------------------------------
if [ "$DRY" = 1 ]; then
  # Stand-in: the build is CI's own `pip install -e .`; check that it registered the ops.
  run_step build "$(limit 300 "$SANITIZER_RESERVE")" "$PY" scripts/gpu_env.py --check-ops
else
  run_step build "$(limit 300 "$SANITIZER_RESERVE")" bash -c '"$0" -m pip install --no-deps \
    --no-build-isolation --no-index -v -e . && "$0" scripts/gpu_env.py --check-ops' "$PY"
fi

# -- kernel-level tests -------------------------------------------------------------------------
pytest_args kernels
if [ "$DRY" = 1 ]; then
  run_step kernels "$(limit 180 "$SANITIZER_RESERVE")" "$PY" -m pytest "${PYTEST_ARGS[@]}" \
    -m "not gpu" -k "padding_semantics" "${KERNEL_TESTS[@]}"
else
  run_step kernels "$(limit 180 "$SANITIZER_RESERVE")" "$PY" -m pytest "${PYTEST_ARGS[@]}" \
    -m gpu "${KERNEL_TESTS[@]}"
fi

# -- TARGETS.md anchor timings ------------------------------------------------------------------
if [ "$DRY" = 1 ]; then
  run_step anchors "$(limit 180 "$SANITIZER_RESERVE")" "$PY" -m benchmarks.paths --device cpu \
    --tiny --out "$WORK/anchors.csv"
else
  run_step anchors "$(limit 180 "$SANITIZER_RESERVE")" "$PY" -m benchmarks.paths --device cuda \
    --out "$WORK/anchors.csv"
fi

# -- full-shape parity --------------------------------------------------------------------------
pytest_args parity
if [ "$DRY" = 1 ]; then
  run_step parity "$(limit 150 "$SANITIZER_RESERVE")" "$PY" -m pytest "${PYTEST_ARGS[@]}" \
    -m "not gpu" -k "float64 and lstm-B3-T5 and cpu-reference" tests/test_parity.py
else
  run_step parity "$(limit 150 "$SANITIZER_RESERVE")" "$PY" -m pytest "${PYTEST_ARGS[@]}" \
    -m gpu -k full_shapes tests/test_parity.py
fi

# -- every other GPU test -----------------------------------------------------------------------
pytest_args gpu_tests
if [ "$DRY" = 1 ]; then
  run_step gpu_tests "$(limit 150 "$SANITIZER_RESERVE")" "$PY" -m pytest "${PYTEST_ARGS[@]}" \
    -m "not gpu" -k "available_backends or auto_takes" tests/test_backends.py
else
  run_step gpu_tests "$(limit 150 "$SANITIZER_RESERVE")" "$PY" -m pytest "${PYTEST_ARGS[@]}" \
    -m gpu "${OTHER_TESTS[@]}"
fi

# -- the benchmark grid, with the time left -----------------------------------------------------
grid_limit=$(limit 100000 "$SANITIZER_RESERVE")
# The grid stops starting cases 30 s before its limit (its estimates are a model, not timings).
grid_budget=$((grid_limit > 60 ? grid_limit - 30 : grid_limit / 2))
if [ "$DRY" = 1 ]; then
  run_step grid "$grid_limit" "$PY" -m benchmarks.run --device cpu --quick --threads 1 \
    --only T32-I64-H64 --providers cpp --budget-s "$grid_budget" --out "$WORK/bench"
else
  run_step grid "$grid_limit" "$PY" -m benchmarks.run --device cuda --full \
    --budget-s "$grid_budget" --out "$WORK/bench"
fi

# -- compute-sanitizer --------------------------------------------------------------------------
if [ "$DRY" = 1 ]; then
  run_step sanitizer "$(limit 150)" "$PY" scripts/gpu_sanitize.py --device cpu
else
  run_step sanitizer "$(limit 150)" "$PY" scripts/gpu_sanitize.py --device cuda
fi

echo
cat "$WORK/summary.md"
echo
echo "results: $OUT_DIR/summary.md, $OUT_DIR/status.tsv, $ARCHIVE (work folder $WORK)"
awk -F'\t' 'NR > 1 && $2 != "ok" && $2 != "empty" && $2 != "skipped" {bad = 1} END {exit bad}' "$STATUS"
