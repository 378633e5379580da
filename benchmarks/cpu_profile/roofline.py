"""How fast can an fp32 LSTM / GRU layer be on this CPU? The FLOP floor against measured times.

Every implementation does the same GEMM work: per layer and direction, forward is
2 * T * B * G*H * (I + H) FLOPs (G = 4 gates for the LSTM, 3 for the GRU: the input projection and
the recurrent product), and backward twice that (dx and dh through W_ih / W_hh, dW_ih and dW_hh);
the pointwise gate math is a few percent on top. Dividing by the CPU's FMA peak gives the shortest
time any implementation can take, so "torch's time / 1.3" below that floor means a 1.3x target is
out of reach on this machine, whatever the kernel.

    python -m benchmarks.cpu_profile.roofline --threads 2 --repeats 5 [--cells lstm gru rnn]

Measures (in this process, side by side): the FMA peak (fma_peak.c, built with `cc` when one is
available), MKL's sgemm on a 2048^3 product (torch.mm, a practical GEMM ceiling), nn.LSTM / nn.GRU
(oneDNN) and fused_rnn's "cpp" backend at the issue's shapes; prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time

import torch

# bench_cpu: the same shapes and the same timed calls, interleaved.
from benchmarks.cpu_profile.bench_cpu import SHAPES, bench

HERE = os.path.dirname(os.path.abspath(__file__))

# The issues' speed targets against torch.nn, (inference, fwd+bwd): issue 15's "never slower"
# for the LSTM and its 1.3x for the GRU, issue 14's 1.5x for the Elman RNN.
TARGETS = {"lstm": (1.0, 1.0), "gru": (1.3, 1.3), "rnn": (1.5, 1.5), "rnn_relu": (1.5, 1.5)}
GATES = {"lstm": 4, "gru": 3, "rnn": 1, "rnn_relu": 1}


def fma_peak(threads: int) -> float | None:
    """Sum over `threads` threads of the AVX2 FMA peak in GFLOP/s, or None without a compiler."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        exe = os.path.join(tmp, "fma_peak")
        src = os.path.join(HERE, "fma_peak.c")
        build = subprocess.run(
            [cc, "-O2", "-mavx2", "-mfma", "-fopenmp", src, "-o", exe], capture_output=True
        )
        if build.returncode != 0:
            return None
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        out = subprocess.run([exe], capture_output=True, text=True, env=env, check=True).stdout
    return sum(float(line.split()[2]) for line in out.splitlines() if line.startswith("thread"))


def median_ms(fn, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def gemm_peak(repeats: int) -> float:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    ms = median_ms(lambda: torch.mm(a, b), 2, repeats)
    return 2 * 2048**3 / ms / 1e6


def layer_flops(cell: str, shape: str, mode: str) -> float:
    T, B, n_in, hidden = SHAPES[shape]
    fwd = 2 * T * B * GATES[cell] * hidden * (n_in + hidden)
    return fwd if mode == "infer" else 3 * fwd


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--cells", nargs="+", default=["lstm", "gru"], choices=list(GATES))
    p.add_argument("--shapes", nargs="+", default=["fastrnns", "imdb"],
                   choices=[k for k in SHAPES if k != "proj"])  # fmt: skip
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    peak = fma_peak(a.threads)
    mkl = gemm_peak(a.repeats)
    print(f"torch {torch.__version__}, {a.threads} threads")
    print(f"FMA peak: {peak:.1f} GFLOP/s" if peak else "FMA peak: not measured (no C compiler)")
    print(f"MKL sgemm 2048^3: {mkl:.1f} GFLOP/s")
    ceiling = peak or mkl
    print()
    print(
        "| shape (T,B,I,H) | cell | mode | GFLOP | floor at peak (ms) | nn (ms) | nn GFLOP/s "
        "| cpp (ms) | cpp GFLOP/s | target (ms) | target needs GFLOP/s | % of peak "
        "| best possible |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for shape in a.shapes:
        for cell in a.cells:
            for mode, goal in zip(("infer", "fwd+bwd"), TARGETS[cell]):
                r = bench(a.threads, SHAPES[shape], cell, mode, a.warmup, a.repeats)
                t_nn, t_cpp = r["ms"]["torch"], r["ms"]["cpp"]
                flops = layer_flops(cell, shape, mode)
                floor = flops / ceiling / 1e6
                target = t_nn / goal
                need = flops / target / 1e6
                print(
                    f"| {shape} {SHAPES[shape]} | {cell} | {mode} | {flops / 1e9:.1f} "
                    f"| {floor:.0f} | {t_nn:.0f} | {flops / t_nn / 1e6:.0f} | {t_cpp:.0f} "
                    f"| {flops / t_cpp / 1e6:.0f} | {target:.0f} | {need:.0f} "
                    f"| {100 * need / ceiling:.0f}% | {t_nn / floor:.2f}x |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
