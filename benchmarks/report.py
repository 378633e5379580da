"""Reporting: the run's environment, CSV history rows, the console table and the markdown page.

Speedups are torch's median time over the provider's (same case, mode and run): above 1x is
faster than torch's module. Times are per call (the whole sequence); ``us_per_step`` divides
by the padded length T.
"""

from __future__ import annotations

import csv
import datetime as _dt
import os
import platform
import subprocess
from pathlib import Path

import torch

from .cases import ALL_PROVIDER_NAMES as PROVIDER_ORDER
from .cases import SHORT_DTYPE
from .runner import MODES, Result

CSV_FIELDS = [
    "run_id",
    "date",
    "commit",
    "device",
    "device_name",
    "threads",
    "loadavg",
    "torch",
    "provider",
    "case",
    "cell",
    "mode",
    "dtype",
    "B",
    "T",
    "I",
    "H",
    "layers",
    "bidirectional",
    "varlen",
    "lengths_source",
    "mean_len",
    "tags",
    "status",
    "median_ms",
    "p20_ms",
    "p80_ms",
    "min_ms",
    "reps",
    "us_per_step",
    "speedup_vs_torch",
    "peak_mib",
    "detail",
]


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _commit() -> str:
    """``$FUSED_RNN_COMMIT``, else ``git describe`` of the checkout (``-dirty`` marked)."""
    env = os.environ.get("FUSED_RNN_COMMIT", "").strip()
    if env:
        return env
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment(device: str) -> dict:
    """What identifies a run: id, UTC date, commit, device and its name, threads, load, torch."""
    now = _dt.datetime.now(_dt.timezone.utc)
    if device == "cuda":
        name = torch.cuda.get_device_name()
    else:
        name = f"{_cpu_name()} ({os.cpu_count()} cores)"
    return {
        "run_id": now.strftime("%Y%m%dT%H%M%SZ"),
        "date": now.isoformat(timespec="seconds"),
        "commit": _commit(),
        "device": device,
        "device_name": name,
        "threads": torch.get_num_threads(),
        # 1-minute load average at the start: CPU timings taken beside other work are slow and
        # noisy, and this is how a reader of the history can tell.
        "loadavg": f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "",
        "torch": torch.__version__,
    }


def _fmt(x: float | None, spec: str) -> str:
    return "" if x is None else format(x, spec)


def csv_rows(results: list[Result], env: dict) -> list[dict]:
    rows = []
    for r in results:
        c, s = r.case, r.stats
        rows.append(
            {
                **env,
                "provider": r.provider,
                "case": c.id,
                "cell": c.cell,
                "mode": r.mode,
                "dtype": c.dtype,
                "B": c.B,
                "T": r.T,
                "I": c.I,
                "H": c.H,
                "layers": c.layers,
                "bidirectional": int(c.bidirectional),
                "varlen": c.varlen,
                "lengths_source": r.lengths_source,
                "mean_len": _fmt(r.mean_len, ".1f"),
                "tags": "+".join(c.tags),
                "status": r.status,
                "median_ms": _fmt(s and s.median_ms, ".4f"),
                "p20_ms": _fmt(s and s.p20_ms, ".4f"),
                "p80_ms": _fmt(s and s.p80_ms, ".4f"),
                "min_ms": _fmt(s and s.min_ms, ".4f"),
                "reps": s.n if s else "",
                "us_per_step": _fmt(r.us_per_step, ".3f"),
                "speedup_vs_torch": _fmt(r.speedup, ".3f"),
                "peak_mib": _fmt(r.peak_mb, ".1f"),
                "detail": r.detail,
            }
        )
    return rows


def append_csv(path: Path, rows: list[dict]) -> None:
    """Append ``rows`` to the CSV history at ``path`` (header written when the file is new).

    Raises ValueError if the existing file has other columns (the history would be garbled).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    if not new:
        with path.open(newline="") as f:
            header = next(csv.reader(f), [])
        if header != CSV_FIELDS:
            raise ValueError(f"{path} has columns {header}, expected {CSV_FIELDS}: move it away")
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        if new:
            w.writeheader()
        w.writerows(rows)


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def fmt_ms(ms: float) -> str:
    """Three significant digits, never in exponent form: 1234 ms, 12.3 ms, 0.123 ms."""
    if ms >= 100:
        return f"{ms:.0f} ms"
    return f"{ms:.{2 - int(f'{ms:e}'.split('e')[1])}f} ms" if ms >= 0.001 else f"{ms:.2g} ms"


def _cell(r: Result) -> str:
    if r.status != "ok":
        return r.status
    t = fmt_ms(r.stats.median_ms)
    if r.provider == "torch" or r.speedup is None:
        return t
    return f"{t} ({r.speedup:.2f}x)"


def _grid(results: list[Result], modes) -> tuple[list[str], list[list[str]]]:
    """Header (case, mode, providers...) and one row per (case, mode) in run order."""
    # Canonical order; providers skipped on every case get no column (the reasons are listed).
    seen = {r.provider for r in results if r.status != "skip"}
    providers = [p for p in PROVIDER_ORDER if p in seen]
    providers += sorted(seen - set(providers))
    by = {(r.case.id, r.mode, r.provider): r for r in results}
    header = ["case", "mode", *providers]
    body = []
    for cid in dict.fromkeys(r.case.id for r in results):
        for mode in modes:
            cells = [_cell(by[(cid, mode, p)]) if (cid, mode, p) in by else "" for p in providers]
            if any(cells):
                body.append([cid, mode, *cells])
    return header, body


def console_table(results: list[Result], modes=MODES) -> str:
    header, body = _grid(results, modes)
    widths = [max(len(str(row[i])) for row in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _md_table(header, body) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(out)


def markdown(results: list[Result], env: dict, not_run=(), command: str = "", plots=()) -> str:
    """The markdown page for the README: headline table, details, reasons, reproduction."""
    dtypes = ", ".join(dict.fromkeys(SHORT_DTYPE[r.case.dtype] for r in results))
    lines = [
        f"## Benchmarks on {env['device_name']}",
        "",
        f"Measured {env['date']} at commit `{env['commit']}` with torch {env['torch']} "
        f"({env['threads']} threads, load average {env['loadavg'] or 'n/a'} at the start), "
        f"{dtypes}. Median time per call (whole sequence); "
        "in brackets torch's median over the provider's, so above 1x is faster than "
        "torch's own module. Every timed provider first matched a float64 run of nn.LSTM/GRU "
        "(outputs, final states, all gradients) within 2x of torch's own error; one that did "
        "not is shown as WRONG and was not timed.",
        "",
        "Case ids: cell, batch B, padded length T, input I, hidden H, L layers, bidi, "
        "imdb-packed/padded (lengths drawn from IMDB reviews), dtype.",
        "",
        _md_table(*_grid(results, ("infer", "fwd_bwd"))),
        "",
        "<details><summary>training forward and backward separately</summary>",
        "",
        _md_table(*_grid(results, ("train_fwd", "bwd"))),
        "",
        "</details>",
        "",
    ]
    peaks = [r for r in results if r.peak_mb is not None and r.mode in ("infer", "fwd_bwd")]
    if peaks:
        header, body = _grid(peaks, ("infer", "fwd_bwd"))
        by = {(r.case.id, r.mode, r.provider): r for r in peaks}
        body = [
            [
                cid,
                m,
                *(
                    f"{by[(cid, m, p)].peak_mb:.0f}" if (cid, m, p) in by else ""
                    for p in header[2:]
                ),
            ]
            for cid, m, *_ in body
        ]
        lines += [
            "Peak memory (MiB above what was allocated before the call):",
            "",
            _md_table(header, body),
            "",
        ]
    else:
        lines += ["Peak memory: n/a on CPU (torch keeps no CPU allocator statistics).", ""]
    reasons = dict.fromkeys(
        f"- {r.provider}"
        + (f" on {r.case.id}" if r.status == "WRONG" else "")
        + f": {r.status}: {r.detail}"
        for r in results
        if r.status in ("skip", "error", "WRONG")
    )
    if reasons:
        lines += ["Not timed:", "", *reasons, ""]
    if not_run:
        lines += [f"Not run (time budget): {', '.join(c.id for c in not_run)}", ""]
    lines += [f"![{name}]({name})" for name in plots]
    if plots:
        lines.append("")
    if command:
        lines += ["Reproduce:", "", "```", command, "```", ""]
    return "\n".join(lines)
