"""Every Triton kernel compiles for Hopper (sm_90) in the configs the GPU path ships, checked
here without a GPU: the interpreter accepts programs (e.g. tl.dot blocks < 16) that the GPU
compiler rejects, so a kernel that would not build on the H100 fails here first.

The compile runs in a subprocess without TRITON_INTERPRET (conftest sets it for this process,
and interpreted kernels cannot be compiled). The default run compiles the largest config of
each path (resident, streamed, step), forward and backward, for the LSTM and GRU in bf16 and
fp32 and for the RNN (tanh, relu) and the LSTM with proj_size in bf16 (their fp32 kernels
differ from those only in the cell's pointwise code); ``-m slow`` adds every shipped config
of every variant.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
ROOT = Path(__file__).resolve().parents[1]


def _compile(*flags: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, "-m", "fused_rnn.triton.aot", *flags],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, f"AOT compile for sm_90 failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout.splitlines()


def _expected(*flags: str) -> int:
    code = f"from fused_rnn.triton import aot; print(aot.main_jobs({list(flags)!r}))"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return int(out.stdout)


def _check(flags: tuple[str, ...], variants: tuple[str, ...]) -> None:
    lines = _compile(*flags, *variants)
    assert len(lines) == _expected(*flags, *variants), lines
    for v in variants:
        for kernel in (f"{v}_fwd ", f"{v}_bwd "):
            for path in ("'resident'", "'streamed'", "'step'"):
                assert any(ln.startswith(kernel) and path in ln for ln in lines), (kernel, path)
    # every line reports the cubin's register count: the kernel was built to SASS
    assert all("'REG'" in ln for ln in lines)


def test_largest_configs_compile_for_sm90():
    _check((), ("lstm", "gru"))


def test_rnn_and_proj_compile_for_sm90():
    _check(("--bf16",), ("rnn_tanh", "rnn_relu", "lstm_proj"))


@pytest.mark.slow
def test_every_shipped_config_compiles_for_sm90():
    _check(("--all",), ("lstm", "gru", "rnn_tanh", "rnn_relu", "lstm_proj"))
