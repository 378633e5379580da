"""``python -m fused_rnn``: environment, backends, a quick parity check and a short timing.

The first command a new user runs: it says what is installed, which backends can run here (and
why not, for the others), checks each available backend against nn.LSTM / nn.GRU on this
machine's device, and times one small case against torch's module.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
import warnings

import torch
from torch import nn

from . import __version__
from .backends import AUTO_ORDER, backend_status, resolve_backend
from .modules import GRU, LSTM
from .ops import load_library

# Kept small so the interpreter-run Triton backend (CPU) finishes in seconds.
PARITY_SHAPE = dict(T=6, B=3, I=5, H=8)


def _environment() -> list[tuple[str, str]]:
    rows = [
        ("fused_rnn", __version__),
        ("python", platform.python_version()),
        ("torch", torch.__version__),
    ]
    try:
        import triton

        rows.append(("triton", triton.__version__))
    except ImportError:
        rows.append(("triton", "not installed"))
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        rows.append(("cuda", f"{torch.version.cuda}, {props.name}, sm_{props.major}{props.minor}"))
    else:
        rows.append(("cuda", "no CUDA device" + ("" if torch.version.cuda else " (CPU torch)")))
    why = load_library()  # checks the torch it was built for before loading it
    rows.append(("extension", "fused_rnn._C loaded" if why is None else f"not loaded: {why}"))
    rows.append(("cpu threads", str(torch.get_num_threads())))
    rows.append(("cpu isa", _cpu_isa()))
    return rows


def _cpu_isa() -> str:
    """The CPU class, the GEMM path the cpp kernels use on it and why (fused_rnn._C's report),
    and the class fused_rnn.cpu_policy keys its table on."""
    from .cpu_policy import isa_class
    from .ops import load_library

    policy = f"policy class {isa_class()}"
    if load_library() is not None:
        return f"{policy} (cpp kernels not built)"
    host, path, why = torch.ops.fused_rnn.cpu_isa()
    return f"{host}; cpp GEMM path: {path} ({why}); {policy}"


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _parity(name: str, cell: str, device: str) -> str:
    """Forward + backward against torch's module, fp32, with variable lengths too."""
    s = PARITY_SHAPE
    theirs = (nn.LSTM if cell == "lstm" else nn.GRU)(
        s["I"], s["H"], num_layers=2, bidirectional=True
    ).to(device)
    ours = (LSTM if cell == "lstm" else GRU)(
        s["I"], s["H"], num_layers=2, bidirectional=True, backend=name
    ).to(device)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(s["T"], s["B"], s["I"], device=device)
    worst = 0.0
    for m in (theirs, ours):
        m.zero_grad()
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, ha = theirs(xa)
    yb, hb = ours(xb)
    (ya.square().sum() + (ha[0] if cell == "lstm" else ha).sum()).backward()
    (yb.square().sum() + (hb[0] if cell == "lstm" else hb).sum()).backward()
    worst = max(worst, _rel(yb, ya), _rel(xb.grad, xa.grad))
    for pa, pb in zip(theirs.parameters(), ours.parameters()):
        worst = max(worst, _rel(pb.grad, pa.grad))
    return f"max rel. error {worst:.1e} " + ("ok" if worst < 1e-4 else "MISMATCH")


def _time(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fused_rnn", description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-timing", action="store_true", help="skip the short timing")
    args = ap.parse_args(argv)
    dev = args.device

    print("== environment")
    for k, v in _environment():
        print(f"  {k:12s} {v}")

    print(f"== backends (auto order on {dev}: {' > '.join(AUTO_ORDER.get(dev, ()))})")
    if dev == "cpu":
        print("  (auto puts cpp or native first per case, from fused_rnn.cpu_policy's table)")
    status = backend_status()
    for name, why in status.items():
        print(f"  {name:10s} {'available' if why is None else 'unavailable: ' + why}")

    print(f"== parity vs torch on {dev} (fp32, 2 layers, bidirectional, fwd+bwd)")
    probe = torch.empty(0, device=dev)
    failures = 0
    for name, why in status.items():
        if why is not None:
            continue
        for cell in ("lstm", "gru"):
            be = resolve_backend(name, cell, probe)  # raises only on a registry bug
            reason = be.supports(cell, probe, False)
            if reason is not None:
                print(f"  {name:10s} {cell}: skipped ({reason})")
                continue
            try:
                line = _parity(name, cell, dev)
            except Exception as e:  # report, keep checking the others
                line = f"FAILED: {type(e).__name__}: {e}"
            failures += "ok" not in line
            print(f"  {name:10s} {cell}: {line}")

    if not args.no_timing:
        T, B, I, H = 64, 32, 128, 256  # noqa: E741
        print(f"== timing, LSTM fp32 T={T} B={B} I={I} H={H}, forward no_grad, median ms")
        x = torch.randn(T, B, I, device=dev)
        ref = nn.LSTM(I, H).to(dev)
        with torch.no_grad():
            base = _time(lambda: ref(x), 10)
            print(f"  {'torch':10s} {base:8.2f}")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for name in ("auto", *[n for n, w in status.items() if w is None]):
                    if name == "triton" and dev == "cpu":
                        print(f"  {name:10s} skipped (interpreter on CPU: not a speed path)")
                        continue
                    m = LSTM(I, H, backend=name).to(dev)
                    m.load_state_dict(ref.state_dict())
                    try:
                        ms = _time(lambda m=m: m(x), 10)
                    except Exception as e:
                        print(f"  {name:10s} FAILED: {type(e).__name__}: {e}")
                        failures += 1
                        continue
                    print(f"  {name:10s} {ms:8.2f}  ({base / ms:.2f}x torch)")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
