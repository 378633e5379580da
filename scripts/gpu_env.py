"""The environment facts scripts/gpu_check.sh needs, and its check that a build registered.

    python3 scripts/gpu_env.py ENV_SH         print versions, flags and the device; write ENV_SH
    python3 scripts/gpu_env.py --check-ops    exit 1 unless fused_rnn._C registered its ops for
                                              the device (cuda when one is visible, else cpu)

ENV_SH holds shell assignments that gpu_check.sh sources: ARCH (the device's compute capability
as TORCH_CUDA_ARCH_LIST spells it, "" without a GPU), HAS_XDIST and HAS_TIMEOUT (1 when
pytest-xdist / pytest-timeout are importable: the GPU image documents both, but a plugin that is
absent must not turn every test step into a usage error), NPROC.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import sys


def _has(module: str) -> int:
    try:
        return int(importlib.util.find_spec(module) is not None)
    except (ImportError, ValueError):
        return 0


def describe(env_sh: str) -> int:
    import torch

    cuda = torch.cuda.is_available()
    print("python", platform.python_version(), sys.executable)
    print("torch", torch.__version__, "cuda", torch.version.cuda)
    print("cudnn", torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None)
    # TF32 (issue 12, item 5): with cudnn.allow_tf32 (torch's default True) cuDNN's fp32 RNN may
    # run on TF32 tensor cores; benchmarks.paths times fp32 cuDNN with it off and on.
    print("torch.backends.cudnn.allow_tf32", torch.backends.cudnn.allow_tf32)
    print("torch.backends.cuda.matmul.allow_tf32", torch.backends.cuda.matmul.allow_tf32)
    arch = ""
    if cuda:
        major, minor = torch.cuda.get_device_capability(0)
        arch = f"{major}.{minor}"
        props = torch.cuda.get_device_properties(0)
        print(
            f"device {props.name}: sm_{major}{minor}, {props.multi_processor_count} SMs, "
            f"{props.total_memory / 2**30:.0f} GiB"
        )
    else:
        print("device: no CUDA device visible to torch")
    try:
        import triton

        print("triton", triton.__version__)
    except ImportError as e:
        print("triton missing:", e)
    flags = {"HAS_XDIST": _has("xdist"), "HAS_TIMEOUT": _has("pytest_timeout")}
    print("pytest plugins:", flags)
    with open(env_sh, "w") as f:
        f.write(f"ARCH={arch}\n")
        for k, v in flags.items():
            f.write(f"{k}={v}\n")
        f.write(f"NPROC={os.cpu_count() or 1}\n")
    return 0


def check_ops() -> int:
    """Exit status 0 when every fused_rnn:: op has a kernel for the device; the build step
    fails on anything else, so a CPU-only build cannot pass for a CUDA one."""
    import torch

    key = "CUDA" if torch.cuda.is_available() else "CPU"
    try:
        import fused_rnn._C  # noqa: F401 - registers torch.ops.fused_rnn
    except ImportError as e:
        print(f"fused_rnn._C does not import: {e}")
        return 1
    # rnn_* only once the RNN cell is built; an op the schema lacks is not asked for.
    names = ("lstm_fwd", "lstm_bwd", "gru_fwd", "gru_bwd", "rnn_fwd", "rnn_bwd")
    present = [n for n in names if hasattr(torch.ops.fused_rnn, n)]
    missing = [n for n in present if not _has_kernel(f"fused_rnn::{n}", key)]
    print(f"ops registered: {present}; without a {key} kernel: {missing or 'none'}")
    if not present or missing:
        print(f"FAILED: the build did not register every fused_rnn op for {key}")
        return 1
    return 0


def _has_kernel(op: str, key: str) -> bool:
    import torch

    return torch._C._dispatch_has_kernel_for_dispatch_key(op, key)


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--check-ops":
        return check_ops()
    if len(argv) != 1:
        print(__doc__)
        return 2
    return describe(argv[0])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
