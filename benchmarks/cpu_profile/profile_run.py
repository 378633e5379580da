"""A fixed workload to run under `perf record`: one provider, one cell, one mode, N iterations.

    perf record -o nn.data   python benchmarks/cpu_profile/profile_run.py lstm torch infer
    perf record -o cpp.data  python benchmarks/cpu_profile/profile_run.py lstm cpp infer
    perf report -i cpp.data --no-children --sort dso,sym -n | head -30

Samples in [JIT] code are oneDNN's generated kernels (nn.LSTM / nn.GRU on the CPU); samples in
mkl_blas_* are MKL's sgemm (our GEMMs); Sleef_* and fused_rnn::cpu::* are our pointwise passes.
"""

from __future__ import annotations

import argparse

import torch

import fused_rnn

SHAPES = {"fastrnns": (100, 64, 512, 512), "imdb": (256, 64, 128, 256)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("cell", choices=["lstm", "gru"])
    p.add_argument("provider", choices=["torch", "cpp"])
    p.add_argument("mode", choices=["infer", "fwd+bwd"])
    p.add_argument("--shape", default="fastrnns", choices=list(SHAPES))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--iters", type=int, default=5)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    T, B, n_in, hidden = SHAPES[a.shape]
    if a.provider == "torch":
        m = getattr(torch.nn, a.cell.upper())(n_in, hidden)
    else:
        m = getattr(fused_rnn, a.cell.upper())(n_in, hidden, backend="cpp")
    x = torch.randn(T, B, n_in, requires_grad=a.mode != "infer")
    dy = torch.randn(T, B, hidden)
    for _ in range(a.iters):
        if a.mode == "infer":
            with torch.no_grad():
                m(x)
        else:
            m.zero_grad(set_to_none=True)
            y, _ = m(x)
            y.backward(dy)


if __name__ == "__main__":
    main()
