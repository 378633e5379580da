"""Ahead-of-time compile of every kernel in every config the GPU path ships, for Hopper
(sm_90), without a GPU: catches what the interpreter accepts but the GPU compiler rejects,
and reports each kernel's registers and spills.

Run with TRITON_INTERPRET unset (the kernels must be JIT functions, not interpreted ones):
``python -m fused_rnn.triton.aot [--all] [VARIANT ...]`` compiles on every core and prints one
line per kernel: by default one config per (cell variant, direction, path, resident K in one
or two pieces) in bf16 and in fp32 (fp16 differs from bf16 only in the element type), the one
with the largest tiles; with --all every config; with --bf16 only bf16. VARIANTs (default
all): lstm, gru, rnn_tanh, rnn_relu, lstm_proj.
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

from .cells import SPECS
from .common import INTERPRET
from .config import Config, shipped_gpu_configs
from .recurrence import _bwd_kernel, _fwd_kernel

HOPPER = GPUTarget("cuda", 90, 32)
_TY = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


# What is compiled: each cell of fused_rnn.triton.cells, plus the LSTM with proj_size, whose
# folded recurrence (fused_rnn.triton.proj) reads an fp32 input projection and dy and writes
# an fp32 y (a different specialization in fp16 / bf16 only).
VARIANTS = (*SPECS, "lstm_proj")


def _signature(variant: str, bwd: bool, dt: str) -> dict:
    """{argument: type} of the runtime arguments of the kernel for ``variant``."""
    f32, i32 = "*fp32", "i32"
    io = f32 if variant == "lstm_proj" else f"*{dt}"  # xp and y, dy
    if bwd:
        sig = dict(w_ptr=f"*{dt}", len_ptr="*i64", gates_ptr=f32, hs_ptr=f32, cs_ptr=f32)
        sig |= dict(dy_ptr=io, dg_ptr=f32, dhs_ptr=f32, dcs_ptr=f32, dh0_ptr=f32)
        sig |= dict(B=i32, H=i32, T=i32)
    else:
        sig = dict(xp_ptr=io, w_ptr=f"*{dt}", b_ptr=f32, len_ptr="*i64", hs_ptr=f32)
        sig |= dict(cs_ptr=f32, y_ptr=io, gates_ptr=f32, B=i32, H=i32, slots=i32, save=i32)
    return sig | {"counter_ptr": "*i32", "t_first": i32, "n_iter": i32}


def _spec(variant: str):
    return SPECS[variant.removesuffix("_proj")]


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


def compile_config(variant: str, bwd: bool, dtype: torch.dtype, cfg: Config) -> dict:
    """Compile one kernel for sm_90; returns its resource usage (raises if it does not build)."""
    if INTERPRET:
        raise RuntimeError("unset TRITON_INTERPRET: interpreted kernels cannot be compiled")
    kernel = _bwd_kernel if bwd else _fwd_kernel
    sig = _signature(variant, bwd, _TY[dtype])
    consts = dict(_spec(variant).constexprs(), **cfg.constexprs())
    sig.update({k: "constexpr" for k in consts})
    src = triton.compiler.ASTSource(kernel, sig, consts)
    opts = {"num_warps": cfg.num_warps}
    if cfg.path != "step":
        opts["launch_cooperative_grid"] = True
    compiled = triton.compile(src, target=HOPPER, options=opts)
    return _resources(compiled.asm["cubin"])


def jobs(everything: bool, variants=VARIANTS, dtypes=tuple(_TY)) -> list[tuple]:
    """(variant, bwd, dtype, cfg) for every kernel variant and every config the GPU path can
    pick in ``dtypes``; unless ``everything``, only bf16 and fp32 and the config with the
    largest HP per (variant, direction, dtype, path, K in one piece or two) -- the one with
    the most registers, most likely to fail (each compile takes seconds on a CPU)."""
    out = [
        (v, bwd, dt, cfg)
        for bwd, dt, cfg in shipped_gpu_configs()
        for v in variants
        if dt in dtypes
        and not (v == "lstm_proj" and dt == torch.float32)  # fp32: the same kernel as "lstm"
    ]
    if everything:
        return out
    largest = {}
    for v, bwd, dt, cfg in out:
        if dt == torch.float16:
            continue
        key = (v, bwd, dt, cfg.path, cfg.HP2 > 0)
        if key not in largest or cfg.HP > largest[key][3].HP:
            largest[key] = (v, bwd, dt, cfg)
    return list(largest.values())


def kernel_name(variant: str, bwd: bool) -> str:
    return f"{variant}_{'bwd' if bwd else 'fwd'}"


def _compile_job(job: tuple) -> str:
    """One line of the report for job number ``job[-1]`` of jobs(*job[:-1])."""
    variant, bwd, dtype, cfg = jobs(*job[:-1])[job[-1]]
    res = compile_config(variant, bwd, dtype, cfg)
    return f"{kernel_name(variant, bwd):16s} {_TY[dtype]:4s} {cfg} {res}"


def _parse(argv: list[str]) -> tuple:
    """[--all] [--bf16] [VARIANT ...] -> jobs()'s arguments (variants default: every one)."""
    variants = tuple(a for a in argv if not a.startswith("--")) or VARIANTS
    dtypes = (torch.bfloat16,) if "--bf16" in argv else tuple(_TY)
    return "--all" in argv, variants, dtypes


def main_jobs(argv: list[str]) -> int:
    """How many kernels ``main(argv)`` compiles."""
    return len(jobs(*_parse(argv)))


def main(argv: list[str]) -> int:
    job_args = _parse(argv)
    # Each compile is single-threaded (seconds on a CPU): one process per core.
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        args = [(*job_args, i) for i in range(main_jobs(argv))]
        for line in pool.map(_compile_job, args):
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
