"""Measure the table fused_rnn.cpu_policy uses: "cpp" against torch's own op ("native") per
cell, dtype, mode, packed or padded, and (B, H) point, interleaved (bench_cpu.bench).

    OMP_NUM_THREADS=2 python -m benchmarks.cpu_profile.policy_table > table.py

Prints, for this CPU's ISA class, the entries to paste into fused_rnn/cpu_policy.py's TABLE:
the median over rounds of (native time / cpp time), > 1 where cpp is faster.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform

import torch

from benchmarks.cpu_profile.bench_cpu import DTYPES, bench
from fused_rnn.cpu_policy import isa_class

POINTS = ((1, 128), (16, 128), (64, 128), (16, 256), (16, 512), (64, 512))  # (B, H), I = H
# the policy's cell key -> bench_cpu's --cells name
TABLE_CELLS = {
    "lstm": "lstm",
    "gru": "gru",
    "rnn_tanh": "rnn",
    "rnn_relu": "rnn_relu",
    "lstm_proj": "lstm_proj",
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--T", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5, help="at least this many rounds")
    p.add_argument("--seconds", type=float, default=1.0, help="rounds to fill this time per case")
    p.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    p.add_argument(
        "--cells",
        nargs="+",
        default=list(TABLE_CELLS),
        choices=list(TABLE_CELLS),
        help="table cells (lstm_proj: LSTM with proj_size = H / 4)",
    )
    a = p.parse_args()
    isa = isa_class()
    load = os.getloadavg()[0]
    print(f"# {platform.processor() or platform.machine()}, ISA class {isa}, torch "
          f"{torch.__version__}, {a.threads} threads, T={a.T}, load average {load:.2f}, "
          f"{datetime.date.today()}")  # fmt: skip
    for cell in a.cells:
        for dt in a.dtypes:
            for training in (False, True):
                for packed in (False, True):
                    row = []
                    for B, H in POINTS:
                        mode = "fwd+bwd" if training else "infer"
                        r = bench(a.threads, (a.T, B, H, H), TABLE_CELLS[cell], mode, 1,
                                  a.repeats, ("native", "cpp"), DTYPES[dt], packed,
                                  a.seconds, 101)  # fmt: skip
                        row.append((B, H, round(r["ratio"]["cpp"].median, 2)))
                    key = (isa, cell, dt, training, packed)
                    print(f"    {key!r}: {tuple(row)!r},", flush=True)


if __name__ == "__main__":
    main()
