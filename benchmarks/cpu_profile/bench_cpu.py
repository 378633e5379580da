"""Side-by-side CPU timing of nn.LSTM / nn.GRU and fused_rnn's backends, interleaved.

One layer, one direction, padded time-major input (or IMDB-like per-sequence lengths fed as a
PackedSequence with ``--packed``). For each thread count, shape, cell, dtype and mode, all
providers run in the same process interleaved (A B A B ..., benchmarks.timing.measure_interleaved):
warm-up, then `--repeats` rounds, and the median of the per-round ratios torch / provider is
reported with its 20th-80th percentile spread. Modes: "infer" (torch.no_grad forward) and
"fwd+bwd" (forward, then backward of a fixed random dy into x and every parameter).

    OMP_NUM_THREADS=2 python -m benchmarks.cpu_profile.bench_cpu            # threads 2 then 1
    python -m benchmarks.cpu_profile.bench_cpu --shapes imdb --cells gru --repeats 5
    python -m benchmarks.cpu_profile.bench_cpu --providers torch cpp native --dtypes bfloat16

Prints a markdown table (> 1x: the provider is faster than torch).
"""

from __future__ import annotations

import argparse

import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fused_rnn
from benchmarks.timing import Clock, RatioStats, Stats, TimingConfig, measure_interleaved

# (T, B, I, H): PyTorch's benchmarks/fastrnns default, and one layer of the IMDB example.
# (T, B, I, H): PyTorch's benchmarks/fastrnns default, one layer of the IMDB example, an IMDB-like
# Elman RNN layer, and an LSTM wide enough for a projection (used with --cells lstm_proj).
SHAPES = {
    "fastrnns": (100, 64, 512, 512),
    "imdb": (256, 64, 128, 256),
    "imdb_rnn": (400, 32, 128, 128),
    "proj": (100, 64, 512, 1024),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
PROJ_SIZE = 256  # the "lstm_proj" cell: nn.LSTM(proj_size=min(PROJ_SIZE, H // 4)), an LSTMP
CELLS = ["lstm", "gru", "rnn", "rnn_relu", "lstm_proj"]


def _module_args(cell: str, hidden: int) -> tuple[str, dict]:
    """(torch.nn / fused_rnn class name, extra constructor kwargs) of a --cells entry."""
    if cell == "lstm_proj":
        return "LSTM", {"proj_size": min(PROJ_SIZE, max(1, hidden // 4))}
    if cell == "rnn_relu":
        return "RNN", {"nonlinearity": "relu"}
    return cell.upper(), {}


def make_module(provider: str, ref: torch.nn.Module, cell: str):
    """``ref`` itself for "torch", else a fused_rnn module with its weights on ``provider``."""
    if provider == "torch":
        return ref
    name, kw = _module_args(cell, ref.hidden_size)
    ours = getattr(fused_rnn, name)(ref.input_size, ref.hidden_size, backend=provider, **kw)
    ours.load_state_dict(ref.state_dict())
    return ours.to(next(ref.parameters()).dtype)


def _runner(module, x, dy, mode: str, lengths=None):
    """A step for measure_interleaved: one call between two clock marks."""
    inp = x
    if lengths is not None:  # packed once; its data a leaf, so every call has a fresh graph
        p = pack_padded_sequence(x.detach(), lengths, enforce_sorted=False)
        inp = p._replace(data=p.data.requires_grad_(mode != "infer"))
    if mode == "infer":

        def run(clock):
            with torch.no_grad():
                m0 = clock.mark()
                module(inp)
                return [m0, clock.mark()]

    else:
        gy = dy if lengths is None else pack_padded_sequence(dy, lengths, enforce_sorted=False).data

        def run(clock):
            module.zero_grad(set_to_none=True)
            x.grad = None
            m0 = clock.mark()
            y, _ = module(inp)
            (y if lengths is None else y.data).backward(gy)
            return [m0, clock.mark()]

    return run


def bench(
    threads: int,
    shape: tuple[int, int, int, int],
    cell: str,
    mode: str,
    warmup: int,
    repeats: int,
    providers=("torch", "cpp"),
    dtype: torch.dtype = torch.float32,
    packed: bool = False,
    target_s: float = 0.0,
    max_repeats: int = 0,
) -> dict:
    """Median ms per provider and RatioStats (torch / provider) of each non-torch provider.
    ``repeats`` interleaved rounds, or more, up to ``max_repeats``, to fill ``target_s`` seconds
    (short calls need many rounds for a stable median)."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    T, B, n_in, hidden = shape
    name, kw = _module_args(cell, hidden)
    ref = getattr(torch.nn, name)(n_in, hidden, **kw).to(dtype)
    x = torch.randn(T, B, n_in, dtype=dtype, requires_grad=(mode != "infer"))
    dy = torch.randn(T, B, kw.get("proj_size", hidden), dtype=dtype)
    lengths = None
    if packed:  # distinct-ish lengths between T/4 and T, the longest T
        lengths = torch.randint(max(1, T // 4), T + 1, (B,))
        lengths[0] = T
    runs = {p: _runner(make_module(p, ref, cell), x, dy, mode, lengths) for p in providers}
    cfg = TimingConfig(
        warmup=warmup, target_s=target_s, min_reps=repeats, max_reps=max(repeats, max_repeats)
    )
    times = {k: v[0] for k, v in measure_interleaved(runs, Clock("cpu"), cfg).items()}
    base = providers[0]
    return {
        "ms": {k: Stats.of(v).median_ms for k, v in times.items()},
        "ratio": {k: RatioStats.of(times[base], v) for k, v in times.items() if k != base},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--cells", nargs="+", default=["lstm", "gru"], choices=CELLS)
    p.add_argument("--modes", nargs="+", default=["infer", "fwd+bwd"], choices=["infer", "fwd+bwd"])
    p.add_argument("--dtypes", nargs="+", default=["float32"], choices=list(DTYPES))
    p.add_argument("--providers", nargs="+", default=["torch", "cpp"])
    p.add_argument("--packed", action="store_true", help="PackedSequence with varied lengths")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    a = p.parse_args()
    others = a.providers[1:]
    print(f"torch {torch.__version__}, cpu capability {torch.backends.cpu.get_cpu_capability()}")
    print(
        "| threads | shape (T,B,I,H) | cell | dtype | mode | "
        + " | ".join(f"{q} median (ms)" for q in a.providers)
        + " | "
        + " | ".join(f"{a.providers[0]}/{q} (p20-p80)" for q in others)
        + " |"
    )
    print("|---" * (5 + len(a.providers) + len(others)) + "|")
    for threads in a.threads:
        for shape in a.shapes:
            for cell in a.cells:
                for dt in a.dtypes:
                    for mode in a.modes:
                        r = bench(threads, SHAPES[shape], cell, mode, a.warmup, a.repeats,
                                  tuple(a.providers), DTYPES[dt], a.packed)  # fmt: skip
                        ms = " | ".join(f"{r['ms'][q]:.1f}" for q in a.providers)
                        rs = " | ".join(
                            f"{r['ratio'][q].median:.2f}x ({r['ratio'][q].p20:.2f}-"
                            f"{r['ratio'][q].p80:.2f})"
                            for q in others
                        )
                        print(
                            f"| {threads} | {shape} {SHAPES[shape]} | {cell} | {dt} | {mode} "
                            f"| {ms} | {rs} |",
                            flush=True,
                        )


if __name__ == "__main__":
    main()
