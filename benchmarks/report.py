"""The CSV history: a run's environment, one row per case, provider and mode, append and read.

Speedups are torch's time over the provider's (same case, mode and run; the median, or the
minimum where the run said ``--stat min``): above 1x is faster than torch's module. Times
are per call (the whole sequence); ``us_per_step`` divides by the padded length T.
"""

from __future__ import annotations

import csv
import datetime as _dt
import os
import platform
import subprocess
from pathlib import Path

import torch

from .runner import Result

CSV_FIELDS = [
    "run_id",
    "date",
    "commit",
    "device",
    "device_name",
    "threads",
    "loadavg",
    "torch",
    "command",
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
    "stat",
    "median_ms",
    "p20_ms",
    "p80_ms",
    "min_ms",
    "reps",
    "us_per_step",
    "speedup_vs_torch",
    "speedup_p20",
    "speedup_p80",
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


def environment(device: str, command: str = "") -> dict:
    """What identifies a run: id, UTC date, commit, device and its name, threads, load, torch,
    and the command that reproduces it."""
    now = _dt.datetime.now(_dt.timezone.utc)
    if device == "cuda":
        name = torch.cuda.get_device_name()
    else:
        from fused_rnn.cpu_policy import isa_class

        name = f"{_cpu_name()} ({os.cpu_count()} cores, ISA class {isa_class()})"
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
        "command": command,
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
                "stat": r.stat,
                "median_ms": _fmt(s and s.median_ms, ".4f"),
                "p20_ms": _fmt(s and s.p20_ms, ".4f"),
                "p80_ms": _fmt(s and s.p80_ms, ".4f"),
                "min_ms": _fmt(s and s.min_ms, ".4f"),
                "reps": s.n if s else "",
                "us_per_step": _fmt(r.us_per_step, ".3f"),
                "speedup_vs_torch": _fmt(r.speedup, ".3f"),
                "speedup_p20": _fmt(r.ratio and r.ratio.p20, ".3f"),
                "speedup_p80": _fmt(r.ratio and r.ratio.p80, ".3f"),
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
