"""Tables from CSV rows (one run): the console table and the markdown page for the README.

Both read the rows that :func:`benchmarks.report.csv_rows` writes, so a page can be rendered
again from the history: ``python -m benchmarks.render`` (the last run in
``benchmarks/results/results.csv``; ``--run-id`` for another) rewrites ``latest_<device>.md``
and the plots next to the CSV.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .cases import ALL_PROVIDER_NAMES as PROVIDER_ORDER
from .cases import SHORT_DTYPE
from .runner import MODES


def fmt_ms(ms: float) -> str:
    """Three significant digits, never in exponent form: 1234 ms, 12.3 ms, 0.123 ms."""
    if ms >= 100:
        return f"{ms:.0f} ms"
    return f"{ms:.{2 - int(f'{ms:e}'.split('e')[1])}f} ms" if ms >= 0.001 else f"{ms:.2g} ms"


def _cell(r: dict) -> str:
    if r["status"] != "ok":
        return r["status"]
    t = fmt_ms(float(r[f"{r['stat']}_ms"]))
    if r["provider"] == "torch" or not r["speedup_vs_torch"]:
        return t
    spread = ""
    if r.get("speedup_p20"):  # interleaved CPU timing: the spread of the per-repetition ratios
        spread = f", {float(r['speedup_p20']):.2f}-{float(r['speedup_p80']):.2f}"
    return f"{t} ({float(r['speedup_vs_torch']):.2f}x{spread})"


def _grid(rows: list[dict], modes, cell=_cell) -> tuple[list[str], list[list[str]]]:
    """Header (case, mode, providers...) and one row per (case, mode) in run order."""
    # Canonical order; providers skipped on every case get no column (the reasons are listed).
    seen = {r["provider"] for r in rows if r["status"] != "skip"}
    providers = [p for p in PROVIDER_ORDER if p in seen]
    providers += sorted(seen - set(providers))
    by = {(r["case"], r["mode"], r["provider"]): r for r in rows}
    header = ["case", "mode", *providers]
    body = []
    for cid in dict.fromkeys(r["case"] for r in rows):
        for mode in modes:
            cells = [cell(by[(cid, mode, p)]) if (cid, mode, p) in by else "" for p in providers]
            if any(cells):
                body.append([cid, mode, *cells])
    return header, body


def console_table(rows: list[dict], modes=MODES) -> str:
    header, body = _grid(rows, modes)
    widths = [max(len(str(row[i])) for row in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _md_table(header, body) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(out)


def _busy(env: dict) -> bool:
    """True when a CPU run started beside other work (load above half the cores)."""
    if env["device"] != "cpu" or not env.get("loadavg"):
        return False
    cores = env["device_name"].rsplit("(", 1)[-1].split()[0]
    return cores.isdigit() and float(env["loadavg"]) > 0.5 * int(cores)


def markdown(rows: list[dict], not_run=(), command: str = "", plots=()) -> str:
    """The markdown page for the README: headline table, details, reasons, reproduction.

    ``rows``: CSV rows of one run; ``not_run``: ids of cases the time budget left out.
    """
    env = rows[0]
    stat = "minimum" if env["stat"] == "min" else "median"
    dtypes = ", ".join(dict.fromkeys(SHORT_DTYPE[r["dtype"]] for r in rows))
    lines = [
        f"## Benchmarks on {env['device_name']}",
        "",
        f"Measured {env['date']} at commit `{env['commit']}` with torch {env['torch']} "
        f"({env['threads']} threads, load average {env['loadavg'] or 'n/a'} at the start), "
        f"{dtypes}. {stat.capitalize()} time per call (whole sequence); "
        f"in brackets torch's {stat} over the provider's, so above 1x is faster than "
        "torch's own module. Every timed provider first matched a float64 run of nn.LSTM/GRU "
        "(outputs, final states, all gradients) within 2x of torch's own error; one that did "
        "not is shown as WRONG and was not timed. A blank cell: the provider is not in that "
        "case's set (the slow or compiling ones run on a few cases only).",
        "",
    ]
    if _busy(env):
        lines += [
            f"**Measured beside other work** (load average {env['loadavg']}): times are slower "
            "and noisier than on an idle machine (a call that loses its core for a time slice "
            "lands in the upper percentiles); the CSV keeps the median, minimum and 20th-80th "
            "percentiles of every case.",
            "",
        ]
    lines += [
        "Case ids: cell, batch B, padded length T, input I, hidden H, L layers, bidi, "
        "imdb-packed/padded (lengths drawn from IMDB reviews), dtype.",
        "",
        _md_table(*_grid(rows, ("infer", "fwd_bwd"))),
        "",
        "<details><summary>training forward and backward separately</summary>",
        "",
        _md_table(*_grid(rows, ("train_fwd", "bwd"))),
        "",
        "</details>",
        "",
    ]
    peaks = [r for r in rows if r["peak_mib"] and r["mode"] in ("infer", "fwd_bwd")]
    if peaks:
        lines += [
            "Peak memory (MiB above what was allocated before the call):",
            "",
            _md_table(*_grid(peaks, ("infer", "fwd_bwd"), lambda r: f"{float(r['peak_mib']):.0f}")),
            "",
        ]
    else:
        lines += ["Peak memory: n/a on CPU (torch keeps no CPU allocator statistics).", ""]
    reasons = dict.fromkeys(
        f"- {r['provider']}"
        + (f" on {r['case']}" if r["status"] == "WRONG" else "")
        + f": {r['status']}: {r['detail']}"
        for r in rows
        if r["status"] in ("skip", "error", "WRONG")
    )
    if reasons:
        lines += ["Not timed:", "", *reasons, ""]
    if not_run:
        lines += [f"Not run (time budget): {', '.join(not_run)}", ""]
    lines += [f"![{name}]({name})" for name in plots]
    if plots:
        lines.append("")
    if command:
        lines += ["Reproduce:", "", "```", command, "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from .plot import plot_run
    from .report import read_csv

    ap = argparse.ArgumentParser(description="render latest_<device>.md and plots from the CSV")
    ap.add_argument("--csv", type=Path, default=Path(__file__).parent / "results" / "results.csv")
    ap.add_argument("--run-id", default=None, help="default: the last run in the file")
    args = ap.parse_args(argv)
    rows = read_csv(args.csv)
    if not rows:
        raise SystemExit(f"{args.csv} has no rows")
    run_id = args.run_id or rows[-1]["run_id"]
    rows = [r for r in rows if r["run_id"] == run_id]
    if not rows:
        raise SystemExit(f"no rows with run_id {run_id} in {args.csv}")
    plots = plot_run(rows, args.csv.parent)
    device = rows[0]["device"]
    md = markdown(rows, command=rows[0]["command"], plots=[p.name for p in plots])
    path = args.csv.parent / f"latest_{device}.md"
    path.write_text(md)
    print(path)


if __name__ == "__main__":
    main()
