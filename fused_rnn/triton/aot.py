"""Ahead-of-time compile of every kernel in every config the GPU path ships, for Hopper
(sm_90), without a GPU: catches what the interpreter accepts but the GPU compiler rejects,
and reports each kernel's registers and spills.

Run with TRITON_INTERPRET unset (the kernels must be JIT functions, not interpreted ones):
``python -m fused_rnn.triton.aot [--all]`` compiles on every core and prints one line per
kernel: by default one config per (kernel, path, resident K in one or two pieces) in bf16 and
in fp32 (fp16 differs from bf16 only in the element type), the one with the largest tiles;
with --all every config.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget

from . import gru, lstm
from .common import INTERPRET
from .config import Config, shipped_gpu_configs

HOPPER = GPUTarget("cuda", 90, 32)
_TY = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def _signatures(dt: str) -> dict:
    """Per kernel: {argument: type} of its runtime arguments (constexprs are added later)."""
    f32, i32 = "*fp32", "i32"
    tail = {"counter_ptr": "*i32", "t_first": i32, "n_iter": i32}
    return {
        lstm._lstm_fwd_kernel: {
            **dict(xp_ptr=f"*{dt}", w_ptr=f"*{dt}", b_ptr=f32, len_ptr="*i64", hs_ptr=f32),
            **dict(cs_ptr=f32, y_ptr=f"*{dt}", gates_ptr=f32, B=i32, H=i32, slots=i32, save=i32),
            **tail,
        },
        lstm._lstm_bwd_kernel: {
            **dict(w_ptr=f"*{dt}", len_ptr="*i64", gates_ptr=f32, cs_ptr=f32, dy_ptr=f"*{dt}"),
            **dict(dg_ptr=f32, dhs_ptr=f32, dcs_ptr=f32, dh0_ptr=f32, B=i32, H=i32, T=i32),
            **tail,
        },
        gru._gru_fwd_kernel: {
            **dict(xp_ptr=f"*{dt}", w_ptr=f"*{dt}", b_ptr=f32, len_ptr="*i64", hs_ptr=f32),
            **dict(y_ptr=f"*{dt}", gates_ptr=f32, B=i32, H=i32, slots=i32, save=i32),
            **tail,
        },
        gru._gru_bwd_kernel: {
            **dict(w_ptr=f"*{dt}", len_ptr="*i64", gates_ptr=f32, hs_ptr=f32, dy_ptr=f"*{dt}"),
            **dict(dg_ptr=f32, dhs_ptr=f32, dh0_ptr=f32, B=i32, H=i32, T=i32),
            **tail,
        },
    }


def _resources(cubin: bytes) -> dict:
    """{"REG": n, "LOCAL": bytes, "STACK": bytes} of the cubin's kernel, read with the
    cuobjdump shipped in the triton wheel."""
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    tmp = Path(subprocess.check_output(["mktemp", "--suffix=.cubin"], text=True).strip())
    try:
        tmp.write_bytes(cubin)
        out = subprocess.check_output([str(tool), "--dump-resource-usage", str(tmp)], text=True)
    finally:
        tmp.unlink()
    return {k: int(v) for k, v in re.findall(r"(REG|LOCAL|STACK):(\d+)", out)}


def compile_config(kernel, dtype: torch.dtype, cfg: Config) -> dict:
    """Compile one kernel for sm_90; returns its resource usage (raises if it does not build)."""
    if INTERPRET:
        raise RuntimeError("unset TRITON_INTERPRET: interpreted kernels cannot be compiled")
    sig = dict(_signatures(_TY[dtype])[kernel])
    consts = cfg.constexprs()
    sig.update({k: "constexpr" for k in consts})
    src = triton.compiler.ASTSource(kernel, sig, consts)
    opts = {"num_warps": cfg.num_warps}
    if cfg.path != "step":
        opts["launch_cooperative_grid"] = True
    compiled = triton.compile(src, target=HOPPER, options=opts)
    return _resources(compiled.asm["cubin"])


def jobs(everything: bool) -> list[tuple]:
    """(kernel, dtype, cfg) for every kernel and every config the GPU path can pick; unless
    ``everything``, only bf16 and fp32 and the config with the largest HP per (kernel, dtype,
    path, K in one piece or two) -- the one with the most registers, most likely to fail
    (each compile takes seconds on a CPU)."""
    kernels = {
        False: (lstm._lstm_fwd_kernel, gru._gru_fwd_kernel),
        True: (lstm._lstm_bwd_kernel, gru._gru_bwd_kernel),
    }
    out = [(k, dt, cfg) for bwd, dt, cfg in shipped_gpu_configs() for k in kernels[bwd]]
    if everything:
        return out
    largest = {}
    for k, dt, cfg in out:
        if dt == torch.float16:
            continue
        key = (id(k), dt, cfg.path, cfg.HP2 > 0)
        if key not in largest or cfg.HP > largest[key][2].HP:
            largest[key] = (k, dt, cfg)
    return list(largest.values())


def kernel_name(kernel) -> str:
    return getattr(kernel, "fn", kernel).__name__


def _compile_job(job: tuple[bool, int]) -> str:
    """One line of the report for job number ``job[1]`` of jobs(job[0])."""
    kernel, dtype, cfg = jobs(job[0])[job[1]]
    res = compile_config(kernel, dtype, cfg)
    return f"{kernel_name(kernel):17s} {_TY[dtype]:4s} {cfg} {res}"


def main(argv: list[str]) -> int:
    everything = "--all" in argv
    n = len(jobs(everything))
    # Each compile is single-threaded (seconds on a CPU): one process per core.
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for line in pool.map(_compile_job, [(everything, i) for i in range(n)]):
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
