"""Time each Triton path (resident, streamed, step) against nn.LSTM / nn.GRU / nn.RNN (cuDNN)
on the same GPU in the same run, at the shapes of docs TARGETS.md; for scripts/gpu_check.sh.

``python -m fused_rnn.triton.bench_paths OUT.csv`` writes one row per (case, provider) with
forward (no grad) and forward+backward milliseconds (median of CUDA-event timings after a
warm-up that includes the JIT compile), or the error that stopped it. Needs a CUDA device.
"""

from __future__ import annotations

import csv
import os
import sys
import time

import torch

from ..cells import CELLS
from .backend import TritonBackend
from .config import PATH_ENV, PATHS

# (cell, T, B, I, H, dtype, paths): the TARGETS.md anchor shape in bf16 on every path that can
# run it (the RNN on the path chosen by size), and the fastrnns shape in fp32 on the path
# chosen by size.
CASES = [
    ("lstm", 1024, 16, 768, 768, torch.bfloat16, PATHS),
    ("gru", 1024, 16, 768, 768, torch.bfloat16, PATHS),
    ("rnn_tanh", 1024, 16, 768, 768, torch.bfloat16, (None,)),
    ("lstm", 100, 64, 512, 512, torch.float32, (None,)),
    ("gru", 100, 64, 512, 512, torch.float32, (None,)),
]


def _median_ms(fn, reps: int, device: str) -> float:
    """Median wall time of fn() in ms after one warm-up call (JIT compile, cuBLAS handles);
    CUDA events on a GPU, perf_counter elsewhere (the interpreter smoke test)."""
    fn()
    times = []
    for _ in range(reps):
        if device == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def _module(cell: str, n_in: int, H: int) -> torch.nn.RNNBase:
    if cell == "lstm":
        return torch.nn.LSTM(n_in, H)
    if cell == "gru":
        return torch.nn.GRU(n_in, H)
    return torch.nn.RNN(n_in, H, nonlinearity=cell.removeprefix("rnn_"))


def _triton_fns(cell, x, hx, mod, dy):
    """(forward without saving, forward + backward) through the Triton backend."""
    be = TritonBackend()
    w = [p.detach() for p in mod.parameters()]  # w_ih, w_hh, b_ih, b_hh

    def fwd(save):
        return be.fwd(cell, x, hx, *w, None, None, save)

    def fwd_bwd():
        be.bwd(cell, fwd(True)[2], dy, hx)

    return (lambda: fwd(False)), fwd_bwd


def time_case(cell, T, B, n_in, H, dt, paths, device="cuda") -> list[list]:
    """Rows [cell, T, B, I, H, dtype, provider, fwd_ms, fwd_bwd_ms, note] of one shape."""
    torch.manual_seed(0)
    mod = _module(cell, n_in, H).to(device, dt)
    x = torch.randn(T, B, n_in, device=device, dtype=dt)
    h0 = torch.zeros(B, H, device=device, dtype=dt)
    hx = (h0, h0) if cell == "lstm" else (h0,)
    dy = torch.randn(T, B, H, device=device, dtype=dt)
    shape = [cell, T, B, n_in, H, str(dt).removeprefix("torch.")]
    rows = []
    for path in paths:
        name = f"triton-{path or 'auto'}"
        if path is None:
            os.environ.pop(PATH_ENV, None)
        else:
            os.environ[PATH_ENV] = path
        try:
            fwd, fwd_bwd = _triton_fns(CELLS[cell], x, hx, mod, dy)
            with torch.no_grad():
                f = _median_ms(fwd, 5, device)
            rows.append([*shape, name, f, _median_ms(fwd_bwd, 3, device), ""])
        except (RuntimeError, ValueError) as e:
            rows.append([*shape, name, "", "", f"{type(e).__name__}: {e}"[:200]])
        finally:
            os.environ.pop(PATH_ENV, None)
        print(rows[-1], flush=True)
    hx_nn = (h0[None], h0[None]) if cell == "lstm" else h0[None]
    xg = x.detach().requires_grad_()
    try:
        with torch.no_grad():
            f = _median_ms(lambda: mod(x, hx_nn), 5, device)
        fb = _median_ms(lambda: mod(xg, hx_nn)[0].backward(dy), 3, device)
        rows.append([*shape, "torch(cudnn)", f, fb, ""])
    except RuntimeError as e:
        rows.append([*shape, "torch(cudnn)", "", "", str(e)[:200]])
    print(rows[-1], flush=True)
    return rows


def run(out_path: str) -> None:
    dev = torch.cuda.get_device_name()
    rows = [r for case in CASES for r in time_case(*case)]
    with open(out_path, "w", newline="") as fh:
        w = csv.writer(fh)
        head = ["device", "cell", "T", "B", "I", "H", "dtype", "provider", "fwd_ms", "fwd_bwd_ms"]
        w.writerow([*head, "note"])
        w.writerows([dev, *r] for r in rows)


def main(argv: list[str]) -> int:
    if not torch.cuda.is_available():
        print("bench_paths: no CUDA device; nothing to time", file=sys.stderr)
        return 2
    run(argv[0] if argv else "triton_paths.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
