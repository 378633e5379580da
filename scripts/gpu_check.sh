#!/usr/bin/env bash
# The one GPU run of fused_rnn: build, GPU tests, timings, summary -- for a fresh GPU machine
# without network (torch + CUDA, triton, nvcc already installed), in under ~8 minutes.
#
#   scripts/gpu_check.sh [OUT_DIR]        (default: $OUT, else ./gpu_out)
#
# With this workplace's device tool (at most 8 files come back from $OUT), run it as
#   scripts/gpu_check.sh /tmp/gpu; tar czf "$OUT/gpu.tgz" -C /tmp gpu; cp /tmp/gpu/summary.md "$OUT"
#
# Steps (each one's exit status is recorded; a failed step does not stop the later ones):
#   env        nvidia-smi -L, nvidia-smi, versions of python / torch / CUDA / triton / nvcc
#   build      pip install --no-deps --no-build-isolation -e .   (compiles fused_rnn._C)
#   pytest_gpu pytest -m gpu: GPU parity of every backend and dtype, the CUDA path checks
#   cuda_paths the CUDA backend's persistent vs general path vs nn.LSTM/nn.GRU (cuDNN) at the
#              TARGETS.md shapes -> cuda_paths.csv
#   triton_paths  the Triton backend's resident / streamed / step paths vs cuDNN -> triton_paths.csv
#   bench      python -m benchmarks.run --device cuda --full, with the time that is left
# Writes to OUT_DIR: <step>.log, status.tsv, junit_gpu.xml, cuda_paths.csv, bench/ and
# summary.md (statuses, device, the path timings and the benchmark's own summary).
set -u -o pipefail

OUT_DIR="${1:-${OUT:-gpu_out}}"
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-8}"
export MAX_JOBS="${MAX_JOBS:-16}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
PY="${PYTHON:-python}"
TOTAL_S="${GPU_CHECK_TOTAL_S:-470}"  # whole-run budget; the benchmark gets what is left
START=$(date +%s)
STATUS="$OUT_DIR/status.tsv"
printf 'step\texit\tseconds\n' >"$STATUS"

# run_step NAME TIMEOUT_S CMD...: runs CMD with a timeout, output to NAME.log (and a tail on
# stdout), records the exit status (124 = timed out) and the duration.
run_step() {
  local name="$1" limit="$2"
  shift 2
  local t0 rc
  t0=$(date +%s)
  echo "=== $name (limit ${limit}s): $*"
  timeout --kill-after=10 "$limit" "$@" >"$OUT_DIR/$name.log" 2>&1
  rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(($(date +%s) - t0))" >>"$STATUS"
  tail -n 15 "$OUT_DIR/$name.log"
  echo "=== $name: exit $rc after $(($(date +%s) - t0))s"
  return 0
}

left() { echo $((TOTAL_S - ($(date +%s) - START))); }
# cap N: N seconds, or the time left if less, but at least 5 (timeout 0 would mean no limit).
cap() {
  local l
  l=$(left)
  [ "$l" -lt 5 ] && l=5
  echo $(($1 < l ? $1 : l))
}

export PY
run_step env 60 bash -c 'nvidia-smi -L; nvidia-smi; nvcc --version; "$PY" -' <<'EOF'
import platform, torch
print("python", platform.python_version())
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())
print("device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "NONE")
try:
    import triton
    print("triton", triton.__version__)
except Exception as e:  # noqa: BLE001
    print("triton missing:", e)
EOF
nvidia-smi -L >"$OUT_DIR/nvidia-smi-L.txt" 2>&1

run_step build 300 "$PY" -m pip install --no-deps --no-build-isolation -v -e .

run_step pytest_gpu "$(cap 180)" \
  "$PY" -m pytest -m gpu -q -rs --junitxml="$OUT_DIR/junit_gpu.xml" tests

# Persistent vs general path vs cuDNN, at the TARGETS.md shapes. Forward is timed with
# need_saved=False (inference); fwd+bwd = forward with need_saved=True + the backward op.
run_step cuda_paths "$(cap 90)" "$PY" - "$OUT_DIR/cuda_paths.csv" <<'EOF'
import csv, os, sys, torch
import fused_rnn._C  # noqa: F401 - registers torch.ops.fused_rnn
ops = torch.ops.fused_rnn
dev = torch.cuda.get_device_name(0)

def timed(fn, reps):
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    ms = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record(); torch.cuda.synchronize()
        ms.append(a.elapsed_time(b))
    return sorted(ms)[len(ms) // 2]

CASES = [("lstm", 1024, 16, 768, 768, torch.bfloat16), ("lstm", 1024, 16, 768, 768, torch.float16),
         ("gru", 1024, 16, 768, 768, torch.bfloat16), ("lstm", 100, 64, 512, 512, torch.float32),
         ("gru", 100, 64, 512, 512, torch.float32)]
rows = []
for cell, T, B, I, H, dt in CASES:
    G = 4 if cell == "lstm" else 3
    g = torch.Generator(device="cuda").manual_seed(0)
    r = lambda *s: (torch.randn(*s, device="cuda", generator=g) * H**-0.5).to(dt)
    x, h0, c0, dy, dh = r(T, B, I) * H**0.5, r(B, H), r(B, H), r(T, B, H), r(B, H)
    w_ih, w_hh, b_ih, b_hh = r(G * H, I), r(G * H, H), r(G * H), r(G * H)
    def fwd(saved):
        if cell == "lstm":
            return ops.lstm_fwd(x, h0, c0, w_ih, w_hh, b_ih, b_hh, None, saved)
        return ops.gru_fwd(x, h0, w_ih, w_hh, b_ih, b_hh, None, saved)
    def fwd_bwd():
        o = fwd(True)
        if cell == "lstm":
            ops.lstm_bwd(x, h0, c0, w_ih, w_hh, o[0], o[3], o[4], None, dy, dh, dh)
        else:
            ops.gru_bwd(x, h0, w_ih, w_hh, o[0], o[2], o[3], None, dy, dh)
    # (forward path, tensor cores, backward path)
    variants = [("general", "0", "general"), ("persistent", "0", "general"),
                ("persistent", "0", "persistent")]
    if dt != torch.float32:
        variants.append(("persistent", "1", "persistent"))  # tensor-core matvec
    for path, mma, bwd in variants:
        os.environ["FUSED_RNN_CUDA_PATH"], os.environ["FUSED_RNN_CUDA_MMA"] = path, mma
        os.environ["FUSED_RNN_CUDA_BWD"] = bwd
        name = f"cuda-{path}" + ("-mma" if mma == "1" else "") + f"-bwd_{bwd}"
        try:
            f = timed(lambda: fwd(False), 5)
            fb = timed(fwd_bwd, 3)
            rows.append([cell, T, B, I, H, str(dt)[6:], name, f, fb, ""])
        except RuntimeError as e:
            rows.append([cell, T, B, I, H, str(dt)[6:], name, "", "", str(e)[:200]])
    os.environ["FUSED_RNN_CUDA_PATH"], os.environ["FUSED_RNN_CUDA_MMA"] = "auto", "0"
    os.environ["FUSED_RNN_CUDA_BWD"] = "general"
    mod = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(I, H).to("cuda", dt)
    hx = (h0[None], c0[None]) if cell == "lstm" else h0[None]
    try:
        with torch.no_grad():
            f = timed(lambda: mod(x, hx), 5)
        xg = x.detach().requires_grad_()
        fb = timed(lambda: mod(xg, hx)[0].backward(dy), 3)
        rows.append([cell, T, B, I, H, str(dt)[6:], "torch(cudnn)", f, fb, ""])
    except RuntimeError as e:
        rows.append([cell, T, B, I, H, str(dt)[6:], "torch(cudnn)", "", "", str(e)[:200]])
    for row in rows[-len(variants) - 1:]:
        print(row)
with open(sys.argv[1], "w", newline="") as fh:
    w = csv.writer(fh)
    w.writerow(["device", "cell", "T", "B", "I", "H", "dtype", "provider", "fwd_ms",
                "fwd_bwd_ms", "note"])
    for row in rows:
        w.writerow([dev, *row])
EOF

run_step triton_paths "$(cap 100)" "$PY" -m fused_rnn.triton.bench_paths \
  "$OUT_DIR/triton_paths.csv"

if [ -f benchmarks/run.py ]; then
  budget=$(( $(left) - 50 ))
  if [ "$budget" -ge 30 ]; then
    run_step bench $((budget + 30)) "$PY" -m benchmarks.run --device cuda --full \
      --budget-s "$budget" --out "$OUT_DIR/bench"
  else
    printf 'bench\tskipped(no time left)\t0\n' >>"$STATUS"
  fi
else
  printf 'bench\tskipped(no benchmarks/run.py)\t0\n' >>"$STATUS"
fi

{
  echo "# fused_rnn GPU check"
  echo
  echo "Commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(date -u '+%Y-%m-%d %H:%M UTC')," \
    "total $(($(date +%s) - START)) s."
  echo
  echo '```'
  cat "$OUT_DIR/nvidia-smi-L.txt"
  echo '```'
  echo
  echo "| step | exit | seconds |"
  echo "|---|---|---|"
  tail -n +2 "$STATUS" | awk -F'\t' '{printf "| %s | %s | %s |\n", $1, $2, $3}'
  echo
  echo "## pytest -m gpu"
  echo '```'
  tail -n 25 "$OUT_DIR/pytest_gpu.log" 2>/dev/null
  echo '```'
  if [ -f "$OUT_DIR/cuda_paths.csv" ]; then
    echo
    echo "## CUDA backend paths vs cuDNN (median ms; from cuda_paths.csv)"
    echo
    "$PY" - "$OUT_DIR/cuda_paths.csv" <<'EOF'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
print("| cell | T | B | I | H | dtype | provider | fwd ms | fwd us/step | fwd+bwd ms | note |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    f = r["fwd_ms"]
    per = f"{float(f) * 1000 / int(r['T']):.2f}" if f else ""
    fmt = lambda v: f"{float(v):.3f}" if v else ""
    print(f"| {r['cell']} | {r['T']} | {r['B']} | {r['I']} | {r['H']} | {r['dtype']} | "
          f"{r['provider']} | {fmt(f)} | {per} | {fmt(r['fwd_bwd_ms'])} | {r['note']} |")
EOF
  fi
  if ls "$OUT_DIR"/bench/latest_*.md >/dev/null 2>&1; then
    echo
    echo "## benchmarks.run"
    cat "$OUT_DIR"/bench/latest_*.md
  fi
  if [ -f "$OUT_DIR/triton_paths.csv" ]; then
    echo
    echo "## Triton backend paths (triton_paths.csv)"
    echo '```'
    cat "$OUT_DIR/triton_paths.csv"
    echo '```'
  fi
  for step in build pytest_gpu cuda_paths triton_paths bench; do
    rc=$(awk -F'\t' -v s="$step" '$1 == s {print $2}' "$STATUS")
    if [ -n "$rc" ] && [ "$rc" != "0" ] && [ -f "$OUT_DIR/$step.log" ]; then
      echo
      echo "## $step failed (exit $rc): last lines of $step.log"
      echo '```'
      tail -n 40 "$OUT_DIR/$step.log"
      echo '```'
    fi
  done
} >"$OUT_DIR/summary.md"

echo "summary: $OUT_DIR/summary.md"
cat "$OUT_DIR/status.tsv"
# Non-zero when any step failed (skipped steps do not count), so a caller sees it at once.
awk -F'\t' 'NR > 1 && $2 ~ /^[0-9]+$/ && $2 != "0" {bad = 1} END {exit bad}' "$STATUS"
