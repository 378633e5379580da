"""``python -m benchmarks.paths``: the TARGETS.md anchor shapes on every path of the CUDA and
Triton backends and on cuDNN, every timed row checked against float64 (scripts/gpu_check.sh).

    python -m benchmarks.paths --device cuda --out DIR/anchors.csv   # ~1-2 min on an H200
    python -m benchmarks.paths --device cpu --tiny --out X.csv       # the dry run's stand-in

A *variant* is one provider run under fixed switches: the CUDA backend's forward path, tensor
cores and backward path (``FUSED_RNN_CUDA_PATH`` / ``_MMA`` / ``_BWD``), the Triton backend's
path (``FUSED_RNN_TRITON_PATH``; unset = the automatic choice, e.g. resident forward and
streamed backward at H=768 bf16), and cuDNN with ``torch.backends.cudnn.allow_tf32`` off and, in
fp32, on (torch's default is on: cuDNN's fp32 RNN may then use TF32 tensor cores).

Each variant yields two rows, ``infer`` (no-grad forward) and ``fwd_bwd`` (training forward
plus backward), checked and timed independently: a backward that refuses the case (the
resident Triton backward at H=768 bf16 needs more on-chip memory than it may use) leaves the
forward's row intact. Every timed row carries its error against torch's module run in float64
on the same inputs (``err``: the worst tensor's ``max|a-ref| / max|ref|``, ``err_tensor``), the
bound it must meet (``tol``: 2x cuDNN's own error with TF32 off, or the dtype's floor, as in
benchmarks/check.py) and cuDNN's error (``torch_err``); a row over its bound is ``WRONG`` and
still timed. Status: ok | WRONG | error | refused (a forced path that says it cannot run the
case) | skip | interrupted (the step's time limit stopped it: SIGINT).

Rows are appended to the CSV and flushed as each finishes, so a run stopped by its time limit
keeps every row it finished. Exit status 1 when a fused_rnn variant was WRONG or failed.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .cases import Case
from .check import Oracle, call_once, make_inputs, make_torch_module
from .providers import FusedProvider, TorchProvider
from .report import environment
from .runner import Steps
from .timing import Clock, TimingConfig, measure

# The cells of the anchor list. Add "rnn_tanh" (and "rnn_relu") here once fused_rnn has an RNN
# module: the rest (torch module, provider, variants) follows the cell's name.
ANCHOR_CELLS = ["lstm", "gru"]


def anchors(cells=ANCHOR_CELLS) -> list[Case]:
    """The TARGETS.md anchors in the order they are timed: H=768 B=16 T=1024 in bf16 and fp16,
    then the fastrnns shape (T=100 B=64 I=H=512) in fp32."""
    out = [Case(c, 16, 1024, 768, 768, dtype=dt) for dt in ("bfloat16", "float16") for c in cells]
    out += [Case(c, 64, 100, 512, 512, dtype="float32") for c in cells]
    return [_tag(c) for c in out]


def tiny(cells=ANCHOR_CELLS) -> list[Case]:
    """CPU stand-ins for the dry run: the same structure at sizes a 2-core CPU runs at once."""
    return [_tag(Case(c, 3, 9, 5, 8, dtype="float32")) for c in cells]


def _tag(c: Case) -> Case:
    return Case(c.cell, c.B, c.T, c.I, c.H, dtype=c.dtype, tags=("anchor",))


# The switches read by csrc/cuda/bindings.cpp at every call, and by fused_rnn/triton/config.py.
CUDA_ENV = ("FUSED_RNN_CUDA_PATH", "FUSED_RNN_CUDA_MMA", "FUSED_RNN_CUDA_BWD")
TRITON_ENV = "FUSED_RNN_TRITON_PATH"


@dataclass(frozen=True)
class Variant:
    """One provider (``torch`` or a fused_rnn backend) under fixed switches: ``env`` is set
    (a None value: unset) and cuDNN's TF32 flag is ``tf32`` while it is built, checked, timed."""

    name: str
    provider: str
    env: tuple[tuple[str, str | None], ...] = ()
    tf32: bool = False

    @property
    def fused(self) -> bool:
        return self.provider != "torch"

    @contextlib.contextmanager
    def applied(self):
        saved_env = {k: os.environ.get(k) for k, _ in self.env}
        saved_tf32 = torch.backends.cudnn.allow_tf32
        try:
            for k, v in self.env:
                _setenv(k, v)
            torch.backends.cudnn.allow_tf32 = self.tf32
            yield
        finally:
            for k, v in saved_env.items():
                _setenv(k, v)
            torch.backends.cudnn.allow_tf32 = saved_tf32


def _setenv(k: str, v: str | None) -> None:
    if v is None:
        os.environ.pop(k, None)
    else:
        os.environ[k] = v


def _cuda(name: str, path: str, mma: str, bwd: str) -> Variant:
    return Variant(f"cuda-{name}", "cuda", tuple(zip(CUDA_ENV, (path, mma, bwd))))


def variants(case: Case, device: str) -> list[Variant]:
    """What runs on ``case``, the baseline first (speedups are against it)."""
    if device != "cuda":
        return [Variant("torch", "torch"), Variant("cpp", "cpp"), Variant("reference", "reference")]
    fp32 = case.dtype == "float32"
    out = [Variant("cudnn-tf32off" if fp32 else "cudnn", "torch", tf32=False)]
    if fp32:
        out.append(Variant("cudnn-tf32on", "torch", tf32=True))
    out += [
        _cuda("auto", "auto", "0", "general"),
        _cuda("general", "general", "0", "general"),
        _cuda("persistent", "persistent", "0", "general"),
        _cuda("persistent-bwd_persistent", "persistent", "0", "persistent"),
    ]
    if not fp32:  # the tensor-core matvec exists for fp16 / bf16
        out.append(_cuda("persistent-mma-bwd_persistent", "persistent", "1", "persistent"))
    out.append(Variant("triton-auto", "triton", ((TRITON_ENV, None),)))
    out += [Variant(f"triton-{p}", "triton", ((TRITON_ENV, p),)) for p in TRITON_PATHS]
    return out


TRITON_PATHS = ("resident", "streamed", "step")  # fused_rnn/triton/config.py PATHS

FIELDS = [
    "run_id", "date", "commit", "device_name", "torch", "cudnn", "case", "cell", "dtype",
    "T", "B", "I", "H", "variant", "provider", "env", "cudnn_allow_tf32", "matmul_allow_tf32",
    "mode", "status", "median_ms", "p20_ms", "p80_ms", "reps", "us_per_step",
    "speedup_vs_cudnn", "err", "err_tensor", "tol", "torch_err", "detail",
]  # fmt: skip


def _refusal(e: BaseException) -> bool:
    """A forced path saying it cannot run the case (Triton's ValueError, the CUDA bindings'
    check): a documented limit, not a failure."""
    return "cannot run this case" in str(e) or type(e).__name__ == "BackendUnavailableError"


def _short(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:240] if lines else ''}"


class RowWriter:
    """Appends rows to the CSV (header when new) and flushes each one."""

    def __init__(self, path: Path, env: dict):
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.exists() or path.stat().st_size == 0
        self.f = path.open("a", newline="")
        self.w = csv.DictWriter(self.f, fieldnames=FIELDS, extrasaction="ignore")
        if new:
            self.w.writeheader()
            self.f.flush()
        self.env = env
        self.n = 0
        # Tests only (tests/test_gpu_script.py): hang after this many rows, as a case that
        # outlasts the step's limit would, to show that the rows before it survive the kill.
        self.stall_after = int(os.environ.get("FUSED_RNN_PATHS_STALL_AFTER", "0"))
        self.bad = 0  # fused_rnn rows that were WRONG or failed
        self.current: tuple | None = None  # (case, variant, mode) being run, for "interrupted"

    def write(self, case: Case, v: Variant, mode: str, status: str, **kw) -> dict:
        row = {
            **self.env,
            "case": case.id,
            "cell": case.cell,
            "dtype": case.dtype,
            "T": case.T,
            "B": case.B,
            "I": case.I,
            "H": case.H,
            "variant": v.name,
            "provider": v.provider,
            "env": " ".join(f"{k}={'' if x is None else x}" for k, x in v.env),
            "cudnn_allow_tf32": int(v.tf32),
            "matmul_allow_tf32": int(torch.backends.cuda.matmul.allow_tf32),
            "mode": mode,
            "status": status,
            **kw,
        }
        self.w.writerow(row)
        self.f.flush()
        if v.fused and status in ("WRONG", "error"):
            self.bad += 1
        ms, err = kw.get("median_ms", ""), kw.get("err", "")
        why = f"  {kw['detail']}" if kw.get("detail") and status != "ok" else ""
        print(f"{case.id:32s} {v.name:32s} {mode:8s} {status:8s} {ms:>10s} ms  err {err}{why}")
        sys.stdout.flush()
        self.n += 1
        if self.n == self.stall_after:
            time.sleep(3600)
        return row


def _f(x: float | None, spec: str = ".4g") -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def run_variant(case, v, torch_module, inputs, oracle, device, cfg, out, base, is_base):
    """Build, check and time ``v`` on ``case``: one row per mode. ``base`` maps mode to the
    baseline's median (filled when ``is_base``) for the speedup column."""
    clock = Clock(device)
    out.current = (case, v, "build")
    with v.applied():
        try:
            prov = TorchProvider() if v.provider == "torch" else FusedProvider(v.provider)
            why = prov.skip_reason(case, device)
            if why is not None:
                for mode in ("infer", "fwd_bwd"):
                    out.write(case, v, mode, "skip", detail=why)
                return
            built = prov.build(torch_module, case)
            steps = Steps(case, built, inputs)
        except Exception as e:  # noqa: BLE001 - reported as the variant's rows
            for mode in ("infer", "fwd_bwd"):
                out.write(case, v, mode, "refused" if _refusal(e) else "error", detail=_short(e))
            return
        for train, mode in ((False, "infer"), (True, "fwd_bwd")):
            # Each mode on its own: a backward that refuses or fails keeps the forward's row.
            out.current = (case, v, mode)
            try:
                got = call_once(case, built.fn, built.params, inputs, train)
                verdict = oracle.verdict(got, train, built.param_grads)
                if train:
                    (stats,) = measure(steps.train, clock, cfg, ((0, 2),))
                else:
                    (stats,) = measure(steps.infer, clock, cfg)
            except Exception as e:  # noqa: BLE001
                out.write(case, v, mode, "refused" if _refusal(e) else "error", detail=_short(e))
                if device == "cuda":
                    torch.cuda.empty_cache()
                continue
            if is_base:
                base[mode] = stats.median_ms
            out.write(
                case,
                v,
                mode,
                "ok" if verdict.ok else "WRONG",
                median_ms=_f(stats.median_ms, ".4f"),
                p20_ms=_f(stats.p20_ms, ".4f"),
                p80_ms=_f(stats.p80_ms, ".4f"),
                reps=stats.n,
                us_per_step=_f(stats.median_ms * 1e3 / case.T, ".3f"),
                speedup_vs_cudnn=_f(base[mode] / stats.median_ms, ".3f") if mode in base else "",
                err=_f(verdict.err, ".2e"),
                err_tensor=verdict.worst,
                tol=_f(verdict.tol, ".2e"),
                torch_err=_f(oracle.torch_err[train].get(verdict.worst), ".2e"),
                detail=built.note,
            )


def run_case(case: Case, device: str, cfg: TimingConfig, out: RowWriter, seed: int = 0) -> None:
    out.current = (case, Variant("oracle", "torch"), "")
    torch_module = make_torch_module(case, device, seed)
    inputs = make_inputs(case, device, seed)
    # torch's own error, the bound of every row, is cuDNN's IEEE fp32 one (TF32 off).
    with Variant("oracle", "torch", tf32=False).applied():
        oracle = Oracle(case, torch_module, inputs)
    base: dict[str, float] = {}
    vs = variants(case, device)
    for v in vs:
        run_variant(case, v, torch_module, inputs, oracle, device, cfg, out, base, v is vs[0])
    if device == "cuda":
        torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.paths", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    ap.add_argument("--out", type=Path, required=True, help="CSV to append rows to")
    ap.add_argument("--tiny", action="store_true", help="tiny CPU stand-in shapes (dry run)")
    ap.add_argument("--only", default=None, help="cases whose id contains this text")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("benchmarks.paths: no CUDA device visible to torch", file=sys.stderr)
        return 2
    # A step stopped by `timeout -s INT` must reach the except below even where the shell
    # started this process with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    torch.backends.cudnn.allow_tf32 = False  # each variant sets its own; off between them
    cases = tiny() if args.tiny else anchors()
    cases = [c for c in cases if args.only is None or args.only in c.id]
    env = environment(args.device, "python -m benchmarks.paths " + " ".join(argv or sys.argv[1:]))
    env["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else ""
    out = RowWriter(args.out, env)
    cfg = TimingConfig(warmup=2, target_s=0.05, min_reps=5, max_reps=100)
    if args.device == "cpu":
        cfg = TimingConfig(warmup=1, target_s=0.0, min_reps=3, max_reps=3)
    t0 = time.monotonic()
    try:
        for case in cases:
            try:
                run_case(case, args.device, cfg, out)
            except Exception as e:  # noqa: BLE001 - the oracle or the inputs failed
                out.write(case, Variant("oracle", "torch"), "", "error", detail=_short(e))
                out.bad += 1
                if args.device == "cuda":
                    torch.cuda.empty_cache()
    except KeyboardInterrupt:
        if out.current is not None:
            case, v, mode = out.current
            out.write(case, v, mode, "interrupted", detail="stopped by SIGINT (the time limit)")
        print(f"interrupted after {time.monotonic() - t0:.0f}s", flush=True)
        return 130
    print(f"{len(cases)} cases in {time.monotonic() - t0:.0f}s; {out.bad} failed row(s)")
    return 1 if out.bad else 0


if __name__ == "__main__":
    sys.exit(main())
