"""compute-sanitizer memcheck and racecheck over one tiny persistent forward + backward call per
cell, filtered to our kernels (scripts/gpu_check.sh's last step).

    python3 scripts/gpu_sanitize.py                 # each tool in turn over the calls below
    python3 scripts/gpu_sanitize.py --device cpu    # the dry run: the calls alone (cpp backend)
    python3 scripts/gpu_sanitize.py --one           # the calls alone, what each tool runs

The calls force the CUDA backend's persistent forward and backward (FUSED_RNN_CUDA_PATH / _BWD
= persistent: a case they cannot run raises instead of falling back), in float32 on CUDA cores
and in bfloat16 on tensor cores (FUSED_RNN_CUDA_MMA=1), at T=5 B=3 I=7 H=32 so that the
instrumented kernels finish in seconds. Each call's output and gradients are compared with
torch's module, so a call the sanitizer passes but that computes garbage still fails. The tool
checks only kernels whose name contains ``persistent_`` (persistent_fwd_kernel,
persistent_bwd_kernel), with torch's caching allocator off so that memcheck sees the bounds of
every tensor. Exit status 0 when every tool and call passed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys

KERNELS = "kns=persistent_"
TOOLS = ("memcheck", "racecheck")
T, B, I, H = 5, 3, 7, 32  # noqa: E741
# (cell, torch module class name, constructor kwargs); fused_rnn's class has the same name.
# The RNN rows run where fused_rnn has an RNN module and the backend implements the cell; until
# then they are reported as skipped.
CELLS = [
    ("lstm", "LSTM", {}),
    ("gru", "GRU", {}),
    ("rnn_tanh", "RNN", {"nonlinearity": "tanh"}),
    ("rnn_relu", "RNN", {"nonlinearity": "relu"}),
]
# (dtype name, FUSED_RNN_CUDA_MMA, max relative error against torch's module in that dtype)
DTYPES = [("float32", "0", 1e-4), ("bfloat16", "1", 5e-2)]


def _rel(a, b) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30))


def one_call(cls_name, kwargs, dtype, tol, device, backend) -> str:
    """One forward + backward of ours and of torch's module; '' or what differs."""
    import torch

    import fused_rnn

    torch.manual_seed(0)
    theirs = getattr(torch.nn, cls_name)(I, H, **kwargs).to(device, dtype)
    ours = getattr(fused_rnn, cls_name)(I, H, backend=backend, **kwargs).to(device, dtype)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(T, B, I, device=device, dtype=dtype)
    gy = torch.randn(T, B, H, device=device, dtype=dtype)
    got = []
    for m in (ours, theirs):
        xi = x.clone().requires_grad_()
        y, _ = m(xi)
        y.backward(gy)
        got.append([y.detach(), xi.grad, *(p.grad for p in m.parameters())])
    bad = []
    for i, (a, b) in enumerate(zip(*got)):
        err = _rel(a, b)
        if not err <= tol:  # NaN fails too
            bad.append(f"tensor {i}: rel err {err:.2e} > {tol:.0e}")
    return "; ".join(bad)


def unsupported(cell: str, dtype, device: str, backend: str) -> str | None:
    """The backend's own reason for not running ``cell`` (a cell it does not implement yet is
    skipped, not failed), None when it says it can -- or when it cannot be asked, in which case
    the call itself reports."""
    import torch

    try:
        from fused_rnn.backends import get_backend
        from fused_rnn.cells import CELLS as FUSED_CELLS

        x = torch.empty(0, dtype=dtype, device=device)
        return get_backend(backend).supports(FUSED_CELLS[cell], x, False)
    except Exception:  # noqa: BLE001 - an older or newer API: let the call decide
        return None


def calls(device: str) -> int:
    """Every cell's call; the number that failed."""
    import torch

    import fused_rnn

    torch.backends.cudnn.allow_tf32 = False  # the IEEE fp32 result is what ours is held to
    if device == "cuda":
        os.environ["FUSED_RNN_CUDA_PATH"] = "persistent"
        os.environ["FUSED_RNN_CUDA_BWD"] = "persistent"
        backend, dtypes = "cuda", DTYPES
    else:
        backend, dtypes = "cpp", DTYPES[:1]
    failed = 0
    for cell, cls_name, kwargs in CELLS:
        if not hasattr(fused_rnn, cls_name):
            print(f"{cell}: skipped, fused_rnn has no {cls_name} module yet", flush=True)
            continue
        for dt, mma, tol in dtypes:
            os.environ["FUSED_RNN_CUDA_MMA"] = mma
            # LSTM and GRU must run: only a cell a backend has not implemented yet is skipped.
            why = (
                None
                if cell in ("lstm", "gru")
                else unsupported(cell, getattr(torch, dt), device, backend)
            )
            if why is not None:
                print(f"{cell} {dt} on {device}: skipped, {backend}: {why}", flush=True)
                continue
            try:
                bad = one_call(cls_name, kwargs, getattr(torch, dt), tol, device, backend)
                if device == "cuda":
                    torch.cuda.synchronize()
            except Exception as e:  # noqa: BLE001 - reported; the other calls still run
                bad = f"{type(e).__name__}: {str(e).strip()[:300]}"
            failed += bool(bad)
            print(f"{cell} {dt} on {device}: {'FAILED ' + bad if bad else 'ok'}", flush=True)
    return failed


def sanitizer() -> str | None:
    found = shutil.which("compute-sanitizer")
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if not found and home and os.path.exists(os.path.join(home, "bin", "compute-sanitizer")):
            found = os.path.join(home, "bin", "compute-sanitizer")
    return found


def drive(device: str, tools: list[str]) -> int:
    """Each tool over ``--one`` in a child process (on the CPU, the calls alone)."""
    me = [sys.executable, os.path.abspath(__file__), "--one", "--device", device]
    tool = sanitizer() if device == "cuda" else None
    if device == "cuda" and tool is None:
        print("compute-sanitizer not found (PATH, $CUDA_HOME/bin, /usr/local/cuda/bin)")
        return 3
    # memcheck needs each tensor's own allocation to see its bounds.
    env = dict(os.environ, PYTORCH_NO_CUDA_MEMORY_CACHING="1")
    bad = 0
    for name in tools:
        cmd = me
        if tool is not None:
            cmd = [tool, "--tool", name, "--kernel-name", KERNELS, "--error-exitcode", "1",
                   "--print-limit", "20", *me]  # fmt: skip
        print(f"== {name}: {' '.join(cmd)}", flush=True)
        rc = subprocess.run(cmd, env=env).returncode
        print(f"== {name}: exit {rc}", flush=True)
        bad += rc != 0
    return 1 if bad else 0


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="scripts/gpu_sanitize.py", description=__doc__)
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--tools", default=",".join(TOOLS), help="comma-separated sanitizer tools")
    ap.add_argument("--one", action="store_true", help="run the calls in this process")
    args = ap.parse_args(argv)
    if args.one:
        return 1 if calls(args.device) else 0
    return drive(args.device, [t for t in args.tools.split(",") if t])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
