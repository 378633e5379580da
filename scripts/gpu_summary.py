"""summary.md of a scripts/gpu_check.sh run, rebuilt from its work folder after every step.

    python3 scripts/gpu_summary.py WORK > WORK/summary.md

Reads what the steps left in WORK (any of it may be missing: the run may have been stopped
anywhere): meta.env, status.tsv, <step>.log, <step>.xml (pytest's junit), anchors.csv,
bench/latest_*.md. Failures come first: every step that did not end ok, the tests that failed
(from the junit file, else the log's FAILED / ERROR lines, which pytest -v prints as each test
ends), the compiler's ``error:`` lines of a failed build, and the anchor rows that were WRONG or
failed. Standard library only, so it runs even where torch does not import.
"""

from __future__ import annotations

import csv
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

OK_STATUSES = ("ok", "empty", "skipped")
MAX_LINES = 40  # of any one list, so that the summary stays readable


def read_kv(path: Path) -> dict[str, str]:
    out = {}
    if path.exists():
        for line in path.read_text(errors="replace").splitlines():
            k, sep, v = line.partition("=")
            if sep:
                out[k.strip()] = v.strip()
    return out


def read_status(work: Path) -> list[dict]:
    path = work / "status.tsv"
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def junit_counts(path: Path) -> tuple[dict, list[str]] | None:
    """({tests, failures, errors, skipped}, failed test ids) of a junit xml, None if unreadable
    (absent, or cut off by a kill)."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors")}
    counts["skipped"] = sum(int(s.get("skipped", 0)) for s in suites)
    failed = []
    for case in root.iter("testcase"):
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        if bad is not None:
            msg = (bad.get("message") or "").splitlines()
            failed.append(
                f"{case.get('classname', '')}::{case.get('name', '')}"
                + (f" - {msg[0][:160]}" if msg else "")
            )
    return counts, failed


LOG_FAIL = re.compile(r"^(FAILED|ERROR) \S|\s(FAILED|ERROR)\s+\S+::|::\S+ (FAILED|ERROR)\b")


def log_failures(log: Path) -> list[str]:
    """FAILED / ERROR lines of a pytest log, each once (pytest -v prints one as each test ends,
    -rfE again at the end), so that a run stopped before its report still names them."""
    if not log.exists():
        return []
    seen: dict[str, None] = {}
    for line in log.read_text(errors="replace").splitlines():
        if LOG_FAIL.search(line):
            seen.setdefault(line.strip()[:220])
    return list(seen)


def last_line(log: Path, pattern: str) -> str:
    if not log.exists():
        return ""
    hits = [ln for ln in log.read_text(errors="replace").splitlines() if re.search(pattern, ln)]
    return hits[-1].strip() if hits else ""


def tail(log: Path, n: int) -> list[str]:
    if not log.exists():
        return ["(no log)"]
    return log.read_text(errors="replace").splitlines()[-n:]


def build_errors(log: Path) -> list[str]:
    """The compiler's error lines (a log's tail often ends in ninja's summary instead)."""
    if not log.exists():
        return []
    pat = re.compile(r"error:|Error:|FAILED:|SystemExit|Traceback|No such file")
    lines = log.read_text(errors="replace").splitlines()
    return [ln.strip()[:240] for ln in lines if pat.search(ln)][:MAX_LINES]


def anchor_rows(work: Path) -> list[dict]:
    path = work / "anchors.csv"
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def grid_counts(work: Path) -> str:
    """'N rows, M cases not run' of the grid (benchmarks.run appends a row per case and mode)."""
    path = work / "bench" / "results.csv"
    rows = 0
    if path.exists():
        with path.open(newline="") as f:
            rows = sum(1 for _ in csv.DictReader(f))
    log = work / "grid.log"
    left = len(re.findall(r": not run \(", log.read_text(errors="replace"))) if log.exists() else 0
    return f"{rows} rows" + (f", {left} cases not run (budget)" if left else "")


def anchors_table(rows: list[dict]) -> list[str]:
    out = [
        "| case | variant | mode | status | ms | us/step | x cuDNN | err | tol | cuDNN err |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        status = r["status"] if r["status"] in ("ok", "skip") else f"**{r['status']}**"
        out.append(
            f"| {r['case']} | {r['variant']} | {r['mode']} | {status} | {r['median_ms']} | "
            f"{r['us_per_step']} | {r['speedup_vs_cudnn']} | {r['err']} | {r['tol']} | "
            f"{r['torch_err']} |"
        )
    notes = [
        f"- {r['case']} {r['variant']} {r['mode']}: {r['status']}: {r['detail']}"
        for r in rows
        if r["status"] not in ("ok",) and r["detail"]
    ]
    return out + ([""] + notes[:MAX_LINES] if notes else [])


def failures(work: Path, status: list[dict], anchors: list[dict]) -> list[str]:
    out = []
    for s in status:
        if s["status"] in OK_STATUSES:
            continue
        name = s["step"]
        note = f": {s['note']}" if s.get("note") else ""
        took = f"exit {s['exit']}, {s['seconds']} s of {s['limit']} s"
        out.append(f"- **{name}**: {s['status']} ({took}){note}")
        junit = junit_counts(work / f"{name}.xml")
        tests = junit[1] if junit else log_failures(work / f"{name}.log")
        out += [f"  - {t}" for t in tests[:MAX_LINES]]
        if name == "build":
            out += [f"  - `{e}`" for e in build_errors(work / "build.log")]
        if not tests and name != "build":
            out += ["  ```", *("  " + ln for ln in tail(work / f"{name}.log", 15)), "  ```"]
    bad = [r for r in anchors if r["status"] in ("WRONG", "error") and r["provider"] != "torch"]
    out += [f"- anchors: {r['case']} {r['variant']} {r['mode']}: {r['status']} {r['detail']}"
            f" err {r['err']} tol {r['tol']}" for r in bad[:MAX_LINES]]  # fmt: skip
    return out


def main(argv: list[str]) -> int:
    work = Path(argv[0])
    meta = read_kv(work / "meta.env")
    status = read_status(work)
    anchors = anchor_rows(work)
    lines = [
        f"# fused_rnn GPU check ({meta.get('MODE', '?')})",
        "",
        f"Commit {meta.get('COMMIT', '?')}, started {meta.get('STARTED', '?')}, "
        f"budget {meta.get('TOTAL_S', '?')} s, python `{meta.get('PY', '?')}`.",
        "",
    ]
    env_log = work / "env.log"
    if env_log.exists():
        keep = ("device", "torch", "cudnn", "triton", "GPU ", "nvcc", "Cuda compilation", "pytest")
        picked = [
            ln for ln in env_log.read_text(errors="replace").splitlines() if ln.startswith(keep)
        ]
        lines += ["```", *picked[:20], "```", ""]
    lines += [
        "| step | status | exit | seconds | limit | tests / rows | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in status:
        name = s["step"]
        junit = junit_counts(work / f"{name}.xml")
        if junit:
            c = junit[0]
            what = (
                f"{c['tests']} tests, {c['failures']} failed, {c['errors']} errors, "
                f"{c['skipped']} skipped"
            )
        else:
            what = last_line(work / f"{name}.log", r"^=+ .*(passed|failed|error|no tests).* =+$")
        if name == "anchors":
            what = f"{len(anchors)} rows"
        if name == "grid":
            what = grid_counts(work)
        st = s["status"] if s["status"] in OK_STATUSES else f"**{s['status']}**"
        lines.append(f"| {name} | {st} | {s['exit']} | {s['seconds']} | {s['limit']} | {what} | "
                     f"{s.get('note', '')} |")  # fmt: skip
    fails = failures(work, status, anchors)
    lines += ["", "## Failures", ""] + (fails or ["none"])
    if anchors:
        lines += ["", "## Anchor shapes: every path vs cuDNN (anchors.csv)", ""]
        lines += anchors_table(anchors)
    for md in sorted((work / "bench").glob("latest_*.md")):
        lines += ["", f"## Grid (bench/{md.name})", "", md.read_text(errors="replace").strip()]
    san = work / "sanitizer.log"
    if san.exists():
        keep = [ln for ln in san.read_text(errors="replace").splitlines()
                if re.search(r"ERROR SUMMARY|^== |: ok$|FAILED|skipped", ln)]  # fmt: skip
        lines += ["", "## compute-sanitizer", "", "```", *keep[:MAX_LINES], "```"]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
