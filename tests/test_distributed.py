"""DDP and FSDP2 (fully_shard) training of fused_rnn modules gives torch.nn's gradients and
parameters after a few optimiser steps: 2 processes over gloo on the CPU (loopback only), and
the NCCL versions on GPUs. Each run is a separate process group bounded by a timeout; the work
itself is in tests/dist_worker.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

WORKER = Path(__file__).with_name("dist_worker.py")
TIMEOUT_S = 240  # a hung rendezvous or collective fails the test instead of stalling CI


def _run(strategy: str, backend: str, nprocs: int, tmp_path: Path) -> str:
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(WORKER), strategy, backend, str(nprocs), str(tmp_path / "store")]
    # Own process group, so a timeout kills the spawned ranks too, not only their parent.
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{strategy}/{backend} did not finish in {TIMEOUT_S} s:\n{out[-3000:]}")
    assert proc.returncode == 0, out[-5000:]
    return out


CPU_CASES = [
    pytest.param("ddp", id="ddp"),
    pytest.param("fsdp2", id="fsdp2"),
]


@pytest.mark.skipif(not dist.is_gloo_available(), reason="torch built without gloo")
@pytest.mark.parametrize("strategy", CPU_CASES)
def test_gloo_cpu_matches_torch(strategy, tmp_path):
    out = _run(strategy, "gloo", 2, tmp_path)
    assert f"{strategy}/gloo/lstm: 3 steps match torch.nn" in out, out
    assert f"{strategy}/gloo/gru: 3 steps match torch.nn" in out, out


@pytest.mark.gpu
@pytest.mark.parametrize("strategy", CPU_CASES)
def test_nccl_gpu_matches_torch(strategy, tmp_path):
    if not dist.is_nccl_available():
        pytest.skip("torch built without NCCL")
    # NCCL needs one GPU per rank: 2 ranks where there are 2 GPUs, else the 1-rank group.
    nprocs = min(2, torch.cuda.device_count())
    out = _run(strategy, "nccl", nprocs, tmp_path)
    assert f"{strategy}/nccl/lstm: 3 steps match torch.nn" in out, out
