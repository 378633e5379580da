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

# Optional override of the path choice (tests run every path on the same shapes): one of
# PATHS. Unset: chosen by size (see choose_config).
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
    """a (..., M, K) fp32 @ b (..., K, N) weight tile -> fp32. The fp32 operand is rounded to
    the weight's dtype (as cuDNN does) unless DOT_F32."""
    if DOT_F32:
        return tl.dot(a, b, input_precision=PREC)
    return tl.dot(a.to(b.dtype), b)


# The recurrent GEMMs keep each program's output tile wide enough that no two warps compute
# the same MMA tile (which would replicate the weight operand in every warp's registers):
# forward, the gates are packed side by side, (BB, K) @ (K, 4*BH); backward, the gates are the
# batch dimension of a 3D dot, (4, BB, K) @ (4, K, BH), summed over gates afterwards. GRU
# (G=3) leaves the fourth gate slot zero.


@triton.jit
def w_fwd_tile(w_ptr, j, j_ok, k, H, G: tl.constexpr, BH: tl.constexpr, DOT_F32: tl.constexpr):
    """(K, 4*BH) tile with column q*BH + jj = W_hh[q*H + j[jj], k] for gate q < G, else 0.
    j (BH,) hidden units, k (K,) input indices of the recurrent GEMM."""
    q = tl.arange(0, 4)
    r = tl.reshape(q[:, None] * H + j[None, :], (4 * BH,))
    ok = tl.reshape((q[:, None] < G) & j_ok[None, :], (4 * BH,))
    return load_w(w_ptr, r[None, :], k[:, None], ok[None, :] & (k[:, None] < H), H, DOT_F32)


@triton.jit
def split_gates(acc, BB: tl.constexpr, BH: tl.constexpr):
    """(BB, 4*BH) packed gate columns -> four (BB, BH) tensors, gates 0..3."""
    x = tl.permute(tl.reshape(acc, (BB, 2, 2, BH)), (0, 3, 1, 2))  # [b, jj, q // 2, q % 2]
    even, odd = tl.split(x)
    g0, g2 = tl.split(even)
    g1, g3 = tl.split(odd)
    return g0, g1, g2, g3


@triton.jit
def rec_fwd_chunked(
    h_slot, rows, row_ok, w_ptr, j, j_ok, H,
    G: tl.constexpr, BB: tl.constexpr, BH: tl.constexpr, BK: tl.constexpr,
    DOT_F32: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """h (B, H) slot @ the packed W_hh^T tile, K streamed in chunks of BK from global memory
    (per-step kernel) -> (BB, 4*BH) fp32."""
    acc = tl.zeros((BB, 4 * BH), dtype=tl.float32)
    for k0 in range(0, H, BK):
        kc = k0 + tl.arange(0, BK)
        h = ld(h_slot, rows[:, None] * H + kc[None, :], row_ok[:, None] & (kc[None, :] < H))
        acc += mm(h, w_fwd_tile(w_ptr, j, j_ok, kc, H, G, BH, DOT_F32), DOT_F32, PREC)
    return acc


@triton.jit
def w_bwd_tile(w_ptr, j, j_ok, k, H, G: tl.constexpr, DOT_F32: tl.constexpr):
    """(4, K, BH) tile [q, kk, jj] = W_hh[q*H + k[kk], j[jj]] for gate q < G, else 0."""
    q = tl.arange(0, 4)[:, None, None]
    ok = (q < G) & (k[None, :, None] < H) & j_ok[None, None, :]
    return load_w(w_ptr, q * H + k[None, :, None], j[None, None, :], ok, H, DOT_F32)


@triton.jit
def dg_tile(dg_t, rows, row_ok, k, H, G: tl.constexpr):
    """(4, BB, K) fp32 [q, b, kk] = dG[rows[b], c(q)*H + k[kk]] of one step's (B, 4H) gate
    gradients, where c(q) is the column group that meets W_hh's gate q: q itself for the LSTM;
    r, z and then group 3 (W_hn h + b_hn) for the GRU."""
    q = tl.arange(0, 4)[:, None, None]
    col = q + (q // 2) * (4 - G)
    ok = (q < G) & row_ok[None, :, None] & (k[None, None, :] < H)
    return ld(dg_t, rows[None, :, None] * 4 * H + col * H + k[None, None, :], ok)


@triton.jit
def rec_bwd_chunked(
    dg_t, rows, row_ok, w_ptr, j, j_ok, H,
    G: tl.constexpr, BB: tl.constexpr, BH: tl.constexpr, BK: tl.constexpr,
    DOT_F32: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """dG_t (B, 4H) @ W_hh restricted to this program's units, K streamed in chunks of BK
    (per-step kernel) -> (4, BB, BH) fp32 per-gate partial sums."""
    acc = tl.zeros((4, BB, BH), dtype=tl.float32)
    for k0 in range(0, H, BK):
        kc = k0 + tl.arange(0, BK)
        acc += mm(
            dg_tile(dg_t, rows, row_ok, kc, H, G),
            w_bwd_tile(w_ptr, j, j_ok, kc, H, G, DOT_F32),
            DOT_F32,
            PREC,
        )
    return acc


# ----------------------------------------------------------------------------- configuration
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
    HP: int  # resident: the whole K of the recurrent GEMM in one tile (next_pow2(H) or more)
    BK: int  # streamed / step: K chunk of the recurrent GEMM
    num_warps: int
    dot_f32: bool  # run tl.dot in fp32 (fp32 inputs; bf16/fp16 under the interpreter)

    def constexprs(self) -> dict:
        """The constexpr kernel arguments of this config."""
        return dict(
            BB=self.BB,
            BH=self.BH,
            HP=self.HP,
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
RESIDENT_HP = (128, 256, 512, 1024)
RESIDENT_BYTES = 128 * 1024
RESIDENT_WARPS = 8
GPU_BB = 16
GPU_BH = 16
CHUNK_BK = {torch.float32: 16, torch.float16: 32, torch.bfloat16: 32}
CHUNK_WARPS = 4


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


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
    hp = max(RESIDENT_HP[0], next_pow2(H))
    if hp > RESIDENT_HP[-1]:
        return f"H={H} > {RESIDENT_HP[-1]}"
    # forward: the packed (HP, 4*BH) W_hh^T tile; backward also the (4, BB, HP) dG operand
    n = 4 * hp * GPU_BH + (4 * GPU_BB * hp if bwd else 0)
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
        hp = max(RESIDENT_HP[0], next_pow2(H))
        return Config(path, GPU_BB, GPU_BH, hp, hp, RESIDENT_WARPS, f32)
    bk = CHUNK_BK[dtype]
    return Config(path, GPU_BB, GPU_BH, bk, bk, CHUNK_WARPS, f32)


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
        return Config(path, bb, hp, hp, hp, 1, True)
    if path == "streamed":
        return Config(path, bb, hp, k, k, 1, True)
    return Config(path, bb, k, k, k, 1, True)


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
    compile test). The tiles depend on (B, H) only through the path and, resident, HP."""
    out = set()
    for bwd in (False, True):
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            for path in PATHS:
                for H in (*RESIDENT_HP, 2 * RESIDENT_HP[-1]):
                    if why_not(path, bwd, 1, H, dtype, 10**6) is None:
                        out.add((bwd, dtype, gpu_config(bwd, 1, H, dtype, 10**6, path)))
    return sorted(out, key=str)


F32 = (torch.float32,)
I64 = (torch.int64,)
HALF_OR_F32 = (torch.float16, torch.bfloat16, torch.float32)


def check_args(op: str, *specs: tuple) -> None:
    """Raise ValueError naming ``op`` unless every (name, tensor, shape, dtypes) spec holds:
    exactly that shape (the kernels index raw pointers), contiguous, on the first tensor's
    device, and dtype in ``dtypes`` (a tuple; None accepts any)."""
    dev = specs[0][1].device
    for name, t, shape, dtypes in specs:
        if tuple(t.shape) != tuple(shape):
            raise ValueError(f"{op}: {name} has shape {tuple(t.shape)}, expected {tuple(shape)}")
        if dtypes is not None and t.dtype not in dtypes:
            raise ValueError(f"{op}: {name} has dtype {t.dtype}, expected one of {dtypes}")
        if t.device != dev:
            raise ValueError(f"{op}: {name} is on {t.device}, the others on {dev}")
        if not t.is_contiguous():
            raise ValueError(f"{op}: {name} must be contiguous")


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
    if cfg.path != "step":
        if not INTERPRET:
            # Cooperative launch: the driver refuses a grid that cannot be co-resident instead
            # of letting the barrier deadlock.
            meta["launch_cooperative_grid"] = True
        kernel[grid](*args, counter, t_first, n_iter, **meta)
        return
    for s in range(n_iter):
        kernel[grid](*args, counter, t_first + step * s, 1, **meta)
