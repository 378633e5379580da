"""Shared pieces of the Triton backend: interpreter detection, the jit helpers both cells use
(tanh, grid barrier, tile loads), the choice of kernel path and tile sizes, and the one launcher
that drives a recurrence kernel (persistent: one launch; per-step: one launch per step).

Dimension legend: T steps, B batch, H hidden, G gates (4 LSTM, 3 GRU), HP the padded hidden
size a persistent program holds whole, BB batch rows per program, BH hidden units per program,
BK the K-chunk of the per-step kernel's recurrent GEMM.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

# Read once, when the kernels are defined: @triton.jit itself decides at decoration time whether
# it builds an interpreted function, so the two must agree.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

# Optional override of the path choice (tests exercise both paths on the same shapes):
# "sequence" or "step". Unset: chosen by size (see choose_config).
PATH_ENV = "FUSED_RNN_TRITON_PATH"

if INTERPRET:
    # libdevice fails in the interpreter (triton-lang/triton#8825), and 2*sigmoid(2x)-1 in fp32
    # loses relative accuracy near 0 (cancellation). The interpreter runs fp64 on the CPU, so
    # the activations are evaluated in fp64 and rounded once.

    @triton.jit
    def tanh(x):
        x64 = x.to(tl.float64)
        return (2.0 * tl.sigmoid(2.0 * x64) - 1.0).to(tl.float32)

    @triton.jit
    def sigmoid(x):
        return tl.sigmoid(x.to(tl.float64)).to(tl.float32)

else:
    from triton.language.extra import libdevice

    @triton.jit
    def tanh(x):
        return libdevice.tanh(x)

    @triton.jit
    def sigmoid(x):
        # libdevice's exp is accurate to ~1 ulp; tl.exp maps to the approximate ex2
        return 1.0 / (1.0 + libdevice.exp(-x))


@triton.jit
def grid_barrier(counter_ptr, target):
    """Block until ``target`` arrivals have been counted at ``counter_ptr`` (int32, zeroed
    before the launch and never reset: step t waits for n_programs * (t + 1)).

    Valid only when every program that arrives is resident at once (the launcher uses a
    cooperative launch with at most one program per SM). The first bar.sync makes this
    program's global stores of the step happen-before the release; the last one holds every
    thread until the acquire has seen all arrivals.
    """
    tl.debug_barrier()
    tl.atomic_add(counter_ptr, 1, sem="release", scope="gpu")
    while tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu") < target:
        pass
    tl.debug_barrier()


@triton.jit
def ld(ptr, offs, mask):
    """fp32 load of ptr[offs] (0 where masked off). ``.cg`` reads through L2 only: in the
    persistent kernel these tiles were written by other programs, and L1 is not coherent
    across SMs."""
    return tl.load(ptr + offs, mask=mask, other=0.0, cache_modifier=".cg").to(tl.float32)


@triton.jit
def st(ptr, offs, mask, val):
    """ptr[offs] = val, cast to ptr's element type."""
    tl.store(ptr + offs, val.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def load_w(w_ptr, r, c, mask, H, DOT_F32: tl.constexpr):
    """Weight tile w[r, c] of the row-major (G*H, H) matrix (r, c broadcast to the tile's
    shape), 0 where masked off; in fp32 when DOT_F32, else in w's dtype."""
    w = tl.load(w_ptr + r.to(tl.int64) * H + c, mask=mask, other=0.0)
    if DOT_F32:
        w = w.to(tl.float32)
    return w


@triton.jit
def mm(a, b, DOT_F32: tl.constexpr, PREC: tl.constexpr):
    """a (M, K) fp32 state @ b (K, N) weight tile -> (M, N) fp32. The state is rounded to the
    weight's dtype (as cuDNN does) unless DOT_F32."""
    if DOT_F32:
        return tl.dot(a, b, input_precision=PREC)
    return tl.dot(a.to(b.dtype), b)


# ----------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class Config:
    """How one recurrence runs. ``persistent``: one launch looping over time with the weight
    tiles held in registers and a grid barrier per step; else one launch per step."""

    persistent: bool
    BB: int  # batch rows per program
    BH: int  # hidden units per program
    HP: int  # padded hidden size (persistent: whole K of the recurrent GEMM in one tile)
    BK: int  # K-chunk of the per-step kernel's recurrent GEMM
    num_warps: int
    dot_f32: bool  # run tl.dot in fp32 (fp32 inputs; bf16/fp16 under the interpreter)

    def constexprs(self) -> dict:
        """The constexpr kernel arguments of this config."""
        return dict(
            BB=self.BB,
            BH=self.BH,
            HP=self.HP,
            BK=self.BK,
            PERSISTENT=self.persistent,
            DOT_F32=self.dot_f32,
            PREC="ieee",
        )


# GPU limits of the persistent kernel. Each program holds G weight tiles of HP x BH in
# registers; above this many bytes per program ptxas spills (measured with the AOT compile for
# sm_90, see tests/test_triton_compile.py and docs/triton_backend.md).
PERSISTENT_HP = (128, 256, 512, 1024)
PERSISTENT_BB = 16
PERSISTENT_BH = 16
PERSISTENT_WARPS = 8
PERSISTENT_WEIGHT_BYTES = 128 * 1024
STEP_BB = 16
STEP_BH = 32
STEP_BK = 32  # BK = 64 spills (255 registers + stack) in the AOT compile; 32 does not
STEP_WARPS = 4


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def num_sms(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def persistent_fits(G: int, B: int, H: int, dtype: torch.dtype, n_sms: int) -> str | None:
    """None when the persistent kernel can run (B, H) on a GPU with n_sms SMs, else why not."""
    hp = max(PERSISTENT_HP[0], next_pow2(H))
    if hp > PERSISTENT_HP[-1]:
        return f"H={H} > {PERSISTENT_HP[-1]}"
    el = 4 if dtype == torch.float32 else 2
    wbytes = G * hp * PERSISTENT_BH * el
    if wbytes > PERSISTENT_WEIGHT_BYTES:
        return f"{wbytes} B of weights per program > {PERSISTENT_WEIGHT_BYTES}"
    progs = triton.cdiv(B, PERSISTENT_BB) * triton.cdiv(H, PERSISTENT_BH)
    if progs > n_sms:
        return f"{progs} programs > {n_sms} SMs (all must be co-resident for the grid barrier)"
    return None


def gpu_config(G: int, B: int, H: int, dtype: torch.dtype, n_sms: int, path: str | None) -> Config:
    """The config the GPU runs for this case (``path`` forces "sequence" or "step")."""
    dot_f32 = dtype == torch.float32
    why = persistent_fits(G, B, H, dtype, n_sms)
    if path == "sequence" and why is not None:
        raise ValueError(f"fused_rnn triton: the sequence kernel cannot run this case: {why}")
    if why is None and path != "step":
        hp = max(PERSISTENT_HP[0], next_pow2(H))
        return Config(True, PERSISTENT_BB, PERSISTENT_BH, hp, hp, PERSISTENT_WARPS, dot_f32)
    return Config(False, STEP_BB, STEP_BH, STEP_BK, STEP_BK, STEP_WARPS, dot_f32)


def interpreter_config(B: int, H: int, path: str | None) -> Config:
    """Under the interpreter programs run one after another, so a program spinning at a grid
    barrier would wait forever for programs that have not started: the sequence kernel runs
    with ONE program per batch block (the barrier then only waits for itself). Tiles are small
    (the interpreter accepts blocks < 16) to keep shapes tiny yet span several programs and K
    chunks. bf16 tl.dot is wrong in the interpreter (triton-lang/triton#11584): dot in fp32."""
    bb = min(next_pow2(B), 4)
    hp = next_pow2(H)
    if path == "step" or (path is None and hp > 256):
        return Config(False, bb, min(hp, 16), min(hp, 16), min(hp, 16), 1, True)
    return Config(True, bb, hp, hp, hp, 1, True)


def choose_config(G: int, B: int, H: int, dtype: torch.dtype, device: torch.device) -> Config:
    path = os.environ.get(PATH_ENV) or None
    if path not in (None, "sequence", "step"):
        raise ValueError(f"{PATH_ENV} must be 'sequence' or 'step', got {path!r}")
    if INTERPRET:
        return interpreter_config(B, H, path)
    return gpu_config(G, B, H, dtype, num_sms(device), path)


def shipped_gpu_configs() -> list[tuple[int, torch.dtype, Config]]:
    """Every (G, dtype, config) that gpu_config can pick on any GPU (for the ahead-of-time
    compile test): the config depends on (B, H) only through the padded HP and whether the
    persistent kernel fits."""
    out = set()
    for G in (3, 4):
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            for B in (1, 17):
                for H in (*PERSISTENT_HP, 2 * PERSISTENT_HP[-1]):
                    for path in (None, "step"):
                        out.add((G, dtype, gpu_config(G, B, H, dtype, 10**6, path)))
    return sorted(out, key=str)


def run_recurrence(
    kernel, cfg: Config, B: int, H: int, args: tuple, t_first: int, n_iter: int, step: int
):
    """Launch a recurrence ``kernel`` over ``n_iter`` iterations starting at step ``t_first``.

    Every recurrence kernel takes ``args`` followed by (counter_ptr, t_first, n_iter) and the
    constexprs of ``cfg``; iteration s handles step t_first + step * s (step = +1 forward, -1
    backward; the kernel applies the same direction itself). Persistent: one launch running
    all iterations with a grid barrier between them; per-step: one launch per iteration (the
    kernel boundary is the barrier).
    """
    n_b = triton.cdiv(B, cfg.BB)
    grid = (triton.cdiv(H, cfg.BH), n_b)
    # One arrival counter per batch block: blocks never wait for each other.
    counter = torch.zeros(n_b, dtype=torch.int32, device=args[0].device)
    meta = dict(cfg.constexprs(), num_warps=cfg.num_warps)
    if cfg.persistent:
        if not INTERPRET:
            # Cooperative launch: the driver refuses a grid that cannot be co-resident instead
            # of letting the barrier deadlock.
            meta["launch_cooperative_grid"] = True
        kernel[grid](*args, counter, t_first, n_iter, **meta)
        return
    for s in range(n_iter):
        kernel[grid](*args, counter, t_first + step * s, 1, **meta)
