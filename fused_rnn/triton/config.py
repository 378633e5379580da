"""Which path and tiles a recurrence runs with: "resident" and "streamed" loop over time inside
one launch (W_hh held on chip, or re-read from L2 each step), "step" launches once per step.
The GPU choice goes by size and SM count; the interpreter's keeps one program per batch block
for the in-kernel loop (see docs/triton_backend.md).

Dimension legend: B batch, H hidden, HP (+ HP2) the padded hidden size a resident program
holds whole, in one or two power-of-two pieces, BB batch rows per program, BH hidden units
per program, BK K chunk of the streamed / per-step recurrent GEMMs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton

from .common import INTERPRET

# Optional override of the path choice (tests run every path on the same shapes): one of
# PATHS. Unset: chosen by size (see choose_config).
PATH_ENV = "FUSED_RNN_TRITON_PATH"
PATHS = ("resident", "streamed", "step")


@dataclass(frozen=True)
class Config:
    """How one recurrence runs (see docs/triton_backend.md).

    path "resident": one launch loops over time, each program holds its W_hh tile on chip and
    programs exchange h (dG backward) through global memory with a grid barrier per step.
    "streamed": the same loop, but the W_hh tile is re-read from L2 each step in BK chunks
    (H too large to hold on chip). "step": one launch per step, W_hh streamed in BK chunks.
    """

    path: str
    BB: int  # batch rows per program
    BH: int  # hidden units per program
    HP: int  # resident: the K of the recurrent GEMM held whole, in pieces HP and HP2 (0: none)
    HP2: int
    BK: int  # streamed / step: K chunk of the recurrent GEMM
    num_warps: int
    dot_f32: bool  # run tl.dot in fp32 (fp32 inputs; bf16/fp16 under the interpreter)

    def constexprs(self) -> dict:
        """The constexpr kernel arguments of this config."""
        return dict(
            BB=self.BB,
            BH=self.BH,
            HP=self.HP,
            HP2=self.HP2,
            BK=self.BK,
            PERSISTENT=self.path != "step",
            RESIDENT=self.path == "resident",
            DOT_F32=self.dot_f32,
            PREC="ieee",
        )


# GPU tiles. BB = BH = 16 is the smallest tile tl.dot accepts: the most programs, hence the
# least weight per program. The register budget of a resident program (its W_hh tile plus,
# backward, the (4, BB, HP) dG operand) is where ptxas starts spilling in the sm_90 AOT
# compile; the chunked paths' BK likewise (python -m fused_rnn.triton.aot --all; figures in
# docs/triton_backend.md).
RESIDENT_HP = (128, 256, 512, 1024)  # the padded size before any split in two pieces
RESIDENT_SPLIT_MIN = 512  # split HP into HP/2 + HP/4 from here on when that covers H
RESIDENT_BYTES = 128 * 1024
RESIDENT_WARPS = 8
GPU_BB = 16
GPU_BH = 16
CHUNK_BK = {torch.float32: 16, torch.float16: 32, torch.bfloat16: 32}
CHUNK_WARPS = 4


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def resident_k(H: int, min_hp: int, min_split: int) -> tuple[int, int]:
    """(HP, HP2), powers of two (HP2 may be 0) with HP + HP2 >= H: p = max(min_hp,
    next_pow2(H)) in one piece, or as p/2 + p/4 when p >= min_split and that covers H (H=768:
    512 + 256 instead of 1024, a quarter less register and dot work)."""
    p = max(min_hp, next_pow2(H))
    if p >= min_split and p // 2 + p // 4 >= H:
        return p // 2, p // 4
    return p, 0


def num_sms(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def why_not(path: str, bwd: bool, B: int, H: int, dtype: torch.dtype, n_sms: int) -> str | None:
    """None when ``path`` can run (B, H) on a GPU with n_sms SMs, else the reason."""
    if path == "step":
        return None
    progs = triton.cdiv(B, GPU_BB) * triton.cdiv(H, GPU_BH)
    if progs > n_sms:
        return f"{progs} programs > {n_sms} SMs (all must be co-resident for the grid barrier)"
    if path == "streamed":
        return None
    if H > RESIDENT_HP[-1]:
        return f"H={H} > {RESIDENT_HP[-1]}"
    k = sum(resident_k(H, RESIDENT_HP[0], RESIDENT_SPLIT_MIN))
    # forward: the packed (K, 4*BH) W_hh^T tile; backward also the (4, BB, K) dG operand
    n = 4 * k * GPU_BH + (4 * GPU_BB * k if bwd else 0)
    nbytes = n * (4 if dtype == torch.float32 else 2)
    if nbytes > RESIDENT_BYTES:
        return f"{nbytes} B of on-chip operands per program > {RESIDENT_BYTES}"
    return None


def gpu_config(
    bwd: bool, B: int, H: int, dtype: torch.dtype, n_sms: int, path: str | None
) -> Config:
    """The config a GPU runs (``path`` forces one of PATHS; else the first that fits)."""
    if path is not None:
        why = why_not(path, bwd, B, H, dtype, n_sms)
        if why is not None:
            raise ValueError(f"fused_rnn triton: the {path} path cannot run this case: {why}")
    else:
        path = next(p for p in PATHS if why_not(p, bwd, B, H, dtype, n_sms) is None)
    f32 = dtype == torch.float32
    if path == "resident":
        hp, hp2 = resident_k(H, RESIDENT_HP[0], RESIDENT_SPLIT_MIN)
        return Config(path, GPU_BB, GPU_BH, hp, hp2, hp, RESIDENT_WARPS, f32)
    bk = CHUNK_BK[dtype]
    return Config(path, GPU_BB, GPU_BH, bk, 0, bk, CHUNK_WARPS, f32)


def interpreter_config(B: int, H: int, path: str | None) -> Config:
    """Under the interpreter programs run one after another, so a program spinning at a grid
    barrier would wait forever for programs that have not started: the in-kernel time loop
    runs with ONE program per batch block (the barrier then only waits for itself). Tiles are
    small (the interpreter accepts blocks < 16) to keep shapes tiny yet span several programs
    and K chunks. bf16 tl.dot is wrong in the interpreter (triton-lang/triton#11584): the dot
    runs in fp32."""
    bb = min(next_pow2(B), 4)
    hp = next_pow2(H)
    k = min(hp, 16)
    path = path or ("resident" if hp <= 256 else "step")
    if path == "resident":
        # the K split from 4 up, so that small test shapes cover one and two pieces
        k1, k2 = resident_k(H, 1, 4)
        return Config(path, bb, hp, k1, k2, k1, 1, True)
    if path == "streamed":
        return Config(path, bb, hp, k, 0, k, 1, True)
    return Config(path, bb, k, k, 0, k, 1, True)


def choose_config(bwd: bool, B: int, H: int, dtype: torch.dtype, device: torch.device) -> Config:
    """The config of one recurrence (forward or backward) of batch B and hidden size H."""
    path = os.environ.get(PATH_ENV) or None
    if path not in (None, *PATHS):
        raise ValueError(f"{PATH_ENV} must be one of {', '.join(PATHS)}; got {path!r}")
    if INTERPRET:
        return interpreter_config(B, H, path)
    return gpu_config(bwd, B, H, dtype, num_sms(device), path)


def shipped_gpu_configs() -> list[tuple[bool, torch.dtype, Config]]:
    """Every (bwd, dtype, config) that gpu_config can pick on any GPU (for the ahead-of-time
    compile test). The tiles depend on (B, H) only through the path and, resident, (HP, HP2):
    each padded size p once whole (H = p) and once split (H = 3p/4)."""
    out = set()
    sizes = sorted({h for p in RESIDENT_HP for h in (p, 3 * p // 4)} | {2 * RESIDENT_HP[-1]})
    for bwd in (False, True):
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            for path in PATHS:
                for H in sizes:
                    if why_not(path, bwd, 1, H, dtype, 10**6) is None:
                        out.add((bwd, dtype, gpu_config(bwd, 1, H, dtype, 10**6, path)))
    return sorted(out, key=str)
