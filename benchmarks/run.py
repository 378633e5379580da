"""``python -m benchmarks.run``: check and time every provider over a grid of cases.

Prints a table (median per call, speedup against torch's module), appends every row to
``<out>/results.csv`` (device name, torch version, dtype, commit, date), draws the sweep plots
``<out>/sweep_<device>_<dtype>.png`` and writes ``<out>/latest_<device>.md`` for the README.

    python -m benchmarks.run --device cpu --quick          # ~1 min on a 2-core CPU
    python -m benchmarks.run --device cuda --full --out DIR  # budgeted to 5 min on an H100
    python -m benchmarks.run --full --dry-run               # list cases and the time estimate

Exit status 1 when a fused_rnn backend was WRONG or failed on some case (all files are still
written), 130 when stopped by SIGINT (the CSV then holds every case that finished, the markdown
lists the rest as not run), 0 otherwise. CSV rows are appended as each case finishes; with a
budget, a case whose estimate does not fit in what is left is not started.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

import torch

from . import cases as grids
from .plot import plot_run
from .providers import FUSED_BACKENDS, select
from .render import console_table, markdown
from .report import append_csv, csv_rows, environment
from .runner import run_grid
from .timing import TimingConfig

RESULTS = Path(__file__).resolve().parent / "results"
FULL_CUDA_BUDGET_S = 300.0


def parse_args(argv):
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="fused_rnn benchmarks against torch's nn.LSTM/GRU",
    )
    ap.add_argument(
        "--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu"
    )
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small grid (default)")
    size.add_argument("--full", action="store_true", help="every TARGETS.md shape and sweep")
    ap.add_argument(
        "--providers",
        default=None,
        help="comma-separated subset (torch always runs); default: all available",
    )
    ap.add_argument("--cells", default="lstm,gru", help="comma-separated: lstm, gru")
    ap.add_argument("--only", default=None, help="run cases whose id contains this text")
    ap.add_argument("--out", type=Path, default=RESULTS, help=f"results folder ({RESULTS})")
    ap.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help=f"stop starting cases after this many seconds "
        f"(default {FULL_CUDA_BUDGET_S:.0f} for --full on cuda, else none)",
    )
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--stat",
        choices=("median", "min"),
        default="median",
        help="what the table and speedups use (min: on a busy shared CPU)",
    )
    ap.add_argument(
        "--data-dir", default=None, help="folder holding imdb/train.tsv.gz (default ../shared/data)"
    )
    ap.add_argument("--dry-run", action="store_true", help="list cases and estimate, run nothing")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available() and not args.dry_run:
        raise SystemExit("--device cuda: no CUDA device is visible to torch here")
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    cells = [c.strip() for c in args.cells.split(",") if c.strip()]
    if not cells or any(c not in grids.CELLS for c in cells):
        raise SystemExit(f"--cells takes a comma-separated subset of {grids.CELLS}")
    try:
        providers = select(args.providers.split(",") if args.providers else None)
    except ValueError as e:
        raise SystemExit(f"--providers: {e}") from None

    grid = (grids.full_grid if args.full else grids.quick_grid)(args.device)
    grid = [c for c in grid if c.cell in cells and (args.only is None or args.only in c.id)]
    if not grid:
        raise SystemExit("no case matches --cells/--only")
    budget = args.budget_s
    if budget is None and args.full and args.device == "cuda":
        budget = FULL_CUDA_BUDGET_S
    # The estimate counts the providers that would run here; with --dry-run for a device that
    # is absent, every provider the grid allows (torch, cuda, triton, ... on a GPU machine).
    here = args.device == "cpu" or torch.cuda.is_available()

    def runs(p, c):
        return c.wants(p.name) and (
            not here or p.skip_reason(c, args.device) is None or p.name == "torch"
        )

    def est(c):
        names = tuple(
            p.name
            for p in providers
            if runs(p, c) and (here or p.name not in ("cpp", "flashrnn", "haste"))
        )
        return grids.estimate_seconds(c, names, args.device, quick=not args.full), names

    total = sum(est(c)[0] for c in grid)
    print(
        f"{len(grid)} cases on {args.device}, providers {[p.name for p in providers]}; "
        f"rough estimate {total:.0f}s" + (f", budget {budget:.0f}s" if budget else "")
    )
    if args.dry_run:
        for c in grid:
            secs, names = est(c)
            print(f"  {c.id:44s} ~{secs:5.1f}s  {','.join(names)}")
        return 0

    env = environment(args.device, "python -m benchmarks.run " + " ".join(argv))
    if args.device == "cpu" and env["loadavg"] and float(env["loadavg"]) > 0.5 * os.cpu_count():
        print(
            f"warning: load average {env['loadavg']} on {os.cpu_count()} cores: other work is "
            "running, CPU timings will be slow and noisy (recorded in the CSV)"
        )
    cfg = TimingConfig.for_device(args.device, quick=not args.full)
    # SIGINT must raise KeyboardInterrupt even where the shell started us with it ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    t0 = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []

    def on_case(results):
        # Appended as each case finishes: a run stopped by a time limit keeps its finished cases.
        new = csv_rows(results, env)
        append_csv(args.out / "results.csv", new)
        rows.extend(new)

    interrupted = False
    try:
        _, not_run = run_grid(
            grid, providers, args.device, cfg, args.seed, args.data_dir, budget,
            stat=args.stat, estimate=lambda c: est(c)[0], on_case=on_case,
        )  # fmt: skip
    except KeyboardInterrupt:  # `timeout -s INT` (scripts/gpu_check.sh): keep what finished
        interrupted = True
        done = {r["case"] for r in rows}
        not_run = [c for c in grid if c.id not in done]
        print(f"\ninterrupted: {len(not_run)} case(s) not finished")
    print(
        f"\n{env['device_name']}, torch {env['torch']}, {env['threads']} threads, "
        f"commit {env['commit']}; {time.monotonic() - t0:.0f}s\n"
    )
    print(console_table(rows))
    try:
        plots = plot_run(rows, args.out)
    except ImportError as e:  # matplotlib is optional: the CSV and the table are the results
        print(f"no plots: {e}")
        plots = []
    md_path = args.out / f"latest_{args.device}.md"
    md_path.write_text(
        markdown(
            rows,
            [c.id for c in not_run],
            env["command"],
            [p.name for p in plots],
        )
    )
    print(
        f"\nwrote {args.out / 'results.csv'}, {md_path.name}, " + ", ".join(p.name for p in plots)
    )
    failed = [
        r for r in rows if r["provider"] in FUSED_BACKENDS and r["status"] in ("WRONG", "error")
    ]
    for r in {(r["provider"], r["case"]): r for r in failed}.values():
        print(f"FAILED {r['provider']} on {r['case']}: {r['status']}: {r['detail']}")
    return 130 if interrupted else 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
