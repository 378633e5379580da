"""Side-by-side CPU timing of nn.LSTM / nn.GRU (oneDNN) / nn.RNN and fused_rnn's "cpp" backend.

One layer, one direction, fp32, padded time-major input. For each thread count, shape and cell,
both providers run interleaved in the same process: warm-up, then `--repeats` timed runs each,
and the median is reported. Modes: "infer" (torch.no_grad forward) and "fwd+bwd" (forward, then
backward of a fixed random dy into x and every parameter).

    OMP_NUM_THREADS=2 python benchmarks/cpu_profile/bench_cpu.py            # threads 2 then 1
    python benchmarks/cpu_profile/bench_cpu.py --shapes imdb --cells gru --repeats 5

Prints a markdown table; speedup = median over repeats of (torch time / cpp time) of the two
back-to-back runs of each repeat (> 1: cpp faster); the minimum of each provider's runs is printed
too (on a shared, busy machine the minimum is the run least disturbed by other load).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import fused_rnn

# (T, B, I, H): PyTorch's benchmarks/fastrnns default, one layer of the IMDB example, an IMDB-like
# Elman RNN layer, and an LSTM wide enough for a projection (used with --cells lstm_proj).
SHAPES = {
    "fastrnns": (100, 64, 512, 512),
    "imdb": (256, 64, 128, 256),
    "imdb_rnn": (400, 32, 128, 128),
    "proj": (100, 64, 512, 1024),
}
PROJ_SIZE = 256  # the "lstm_proj" cell: nn.LSTM(proj_size=PROJ_SIZE)
CELLS = ["lstm", "gru", "rnn", "lstm_proj"]


def _pair(cell: str, n_in: int, hidden: int):
    kw = {"proj_size": PROJ_SIZE} if cell == "lstm_proj" else {}
    name = cell.split("_")[0].upper()
    ref = getattr(torch.nn, name)(n_in, hidden, **kw)
    ours = getattr(fused_rnn, name)(n_in, hidden, backend="cpp", **kw)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def _runner(module, x: torch.Tensor, dy: torch.Tensor, mode: str):
    if mode == "infer":

        def run():
            with torch.no_grad():
                module(x)

    else:

        def run():
            module.zero_grad(set_to_none=True)
            x.grad = None
            y, _ = module(x)
            y.backward(dy)

    return run


def bench(threads: int, shape: str, cell: str, mode: str, warmup: int, repeats: int) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    T, B, n_in, hidden = SHAPES[shape]
    ref, ours = _pair(cell, n_in, hidden)
    x = torch.randn(T, B, n_in, requires_grad=(mode != "infer"))
    dy = torch.randn(T, B, PROJ_SIZE if cell == "lstm_proj" else hidden)
    runs = {"torch": _runner(ref, x, dy, mode), "cpp": _runner(ours, x, dy, mode)}
    times = {k: [] for k in runs}
    for _ in range(warmup):
        for run in runs.values():
            run()
    for _ in range(repeats):  # interleaved, so drifting machine load hits both alike
        for name, run in runs.items():
            t0 = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    best = {f"{k}_min": min(v) * 1e3 for k, v in times.items()}
    # Ratio of the two runs of the same repeat: robust against load that drifts over the run.
    paired = statistics.median(a / b for a, b in zip(times["torch"], times["cpp"]))
    return {
        "threads": threads,
        "shape": shape,
        "cell": cell,
        "mode": mode,
        "paired": paired,
        **med,
        **best,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--cells", nargs="+", default=["lstm", "gru"], choices=CELLS)
    p.add_argument("--modes", nargs="+", default=["infer", "fwd+bwd"], choices=["infer", "fwd+bwd"])
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    a = p.parse_args()
    print(f"torch {torch.__version__}, cpu capability {torch.backends.cpu.get_cpu_capability()}")
    print(
        "| threads | shape (T,B,I,H) | cell | mode | nn median (ms) | cpp median (ms) | speedup "
        "| nn min (ms) | cpp min (ms) | speedup of mins |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for threads in a.threads:
        for shape in a.shapes:
            for cell in a.cells:
                for mode in a.modes:
                    r = bench(threads, shape, cell, mode, a.warmup, a.repeats)
                    print(
                        f"| {threads} | {shape} {SHAPES[shape]} | {cell} | {mode} "
                        f"| {r['torch']:.1f} | {r['cpp']:.1f} | {r['paired']:.2f}x "
                        f"| {r['torch_min']:.1f} | {r['cpp_min']:.1f} "
                        f"| {r['torch_min'] / r['cpp_min']:.2f}x |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
