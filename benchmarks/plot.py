"""Plots from the CSV history: time per step against hidden size and against batch size.

One PNG per (device, dtype) of a run: a grid of panels, one row per cell (LSTM, GRU) and mode
(inference, forward+backward), one column per sweep (H, B), one line per provider; log-log
axes. Only rows with status ok from the chosen run are drawn.

Redraw from the history: ``python -m benchmarks.plot --csv benchmarks/results/results.csv``
(latest run) or ``--run-id 20260101T000000Z``.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

SWEEPS = (("sweep-H", "H", "hidden size H"), ("sweep-B", "B", "batch size B"))
PLOT_MODES = (("infer", "inference"), ("fwd_bwd", "forward+backward"))


def _rank(provider: str) -> int:
    from .cases import ALL_PROVIDER_NAMES

    names = list(ALL_PROVIDER_NAMES)
    return names.index(provider) if provider in names else len(names)


def plot_run(rows: list[dict], out_dir: Path) -> list[Path]:
    """Draw the sweep plots of ``rows`` (CSV dicts of ONE run) into ``out_dir``; returns paths."""
    import matplotlib

    matplotlib.use("Agg")  # no display on CI or the GPU machine
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["status"] == "ok" and r["us_per_step"]]
    paths = []
    for dtype in dict.fromkeys(r["dtype"] for r in ok):
        sel = [r for r in ok if r["dtype"] == dtype]
        cells = [c for c in ("lstm", "gru") if any(r["cell"] == c for r in sel)]
        panels = [(c, m) for c in cells for m in PLOT_MODES]
        if not panels or not any(s in r["tags"].split("+") for r in sel for s, _, _ in SWEEPS):
            continue
        fig, axes = plt.subplots(
            len(panels), len(SWEEPS), squeeze=False, figsize=(5.5 * len(SWEEPS), 3.2 * len(panels))
        )
        for i, (cell, (mode, mode_name)) in enumerate(panels):
            for j, (tag, key, label) in enumerate(SWEEPS):
                ax = axes[i][j]
                lines = defaultdict(list)
                for r in sel:
                    if r["cell"] == cell and r["mode"] == mode and tag in r["tags"].split("+"):
                        lines[r["provider"]].append((int(r[key]), float(r["us_per_step"])))
                for prov in sorted(lines, key=_rank):
                    pts = sorted(lines[prov])
                    ax.plot(
                        [p[0] for p in pts],
                        [p[1] for p in pts],
                        marker="o",
                        label=prov,
                        color=f"C{_rank(prov) % 10}",
                    )  # one colour per provider everywhere
                xs = sorted({x for pts in lines.values() for x, _ in pts})
                if xs:
                    ax.set_xticks(xs, [str(x) for x in xs])
                    ax.minorticks_off()
                fixed = [r for r in sel if r["cell"] == cell and tag in r["tags"].split("+")]
                other = "B" if key == "H" else "H"
                ctx = f"{other}={fixed[0][other]}, T={fixed[0]['T']}" if fixed else ""
                ax.set_title(f"{cell.upper()} {mode_name} ({ctx})", fontsize=9)
                ax.set_xscale("log", base=2)
                ax.set_yscale("log")
                if xs:
                    ax.set_xticks(xs, [str(x) for x in xs], minor=False)
                ax.set_xlabel(label)
                ax.set_ylabel("µs per time step")
                ax.grid(True, which="both", alpha=0.3)
                if lines:
                    ax.legend(fontsize=7)
        first = sel[0]
        load = f", load {first['loadavg']}" if first.get("loadavg") else ""
        fig.suptitle(
            f"{first['device_name']}, {dtype}, torch {first['torch']}, "
            f"{first['threads']} threads{load}, commit {first['commit']}",
            fontsize=10,
        )
        fig.tight_layout()
        path = out_dir / f"sweep_{first['device']}_{dtype}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    from .report import read_csv

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv", type=Path, default=Path(__file__).parent / "results" / "results.csv")
    ap.add_argument("--run-id", default=None, help="default: the last run in the file")
    ap.add_argument("--out", type=Path, default=None, help="default: the CSV's folder")
    args = ap.parse_args(argv)
    rows = read_csv(args.csv)
    if not rows:
        raise SystemExit(f"{args.csv} has no rows")
    run_id = args.run_id or rows[-1]["run_id"]
    rows = [r for r in rows if r["run_id"] == run_id]
    if not rows:
        raise SystemExit(f"no rows with run_id {run_id} in {args.csv}")
    for p in plot_run(rows, args.out or args.csv.parent):
        print(p)


if __name__ == "__main__":
    main()
