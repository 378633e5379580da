"""Device code every cell's recurrence shares: interpreter detection, activations, the grid
barrier, tile loads and stores, and the recurrent GEMMs of the three paths (see
:mod:`fused_rnn.triton.config`).

Dimension legend: T steps, B batch, H hidden, G gates (4 LSTM, 3 GRU, 1 RNN; the GEMM tiles
always have 4 gate slots), NG gate-gradient columns per step (in units of H), HP the padded
hidden size a resident program holds whole, BB batch rows per program, BH hidden units per
program, BK the K chunk of the streamed / per-step GEMMs.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

# Read once, when the kernels are defined: @triton.jit itself decides at decoration time whether
# it builds an interpreted function, so the two must agree.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

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
def program_tile(len_ptr, B, H, BB: tl.constexpr, BH: tl.constexpr):
    """This program's tile, batch rows [pid_b*BB, +BB) x hidden units [pid_h*BH, +BH):
    rows (BB,) int64, row_ok, lens (BB,) the rows' lengths (len_ptr (B,) int64), j (BH,),
    j_ok, and over the (BB, BH) tile the mask and the offsets into a (B, H) state slot."""
    rows = tl.program_id(1) * BB + tl.arange(0, BB).to(tl.int64)
    row_ok = rows < B
    lens = tl.load(len_ptr + rows, mask=row_ok, other=0)
    j = tl.program_id(0) * BH + tl.arange(0, BH)
    j_ok = j < H
    return (
        rows,
        row_ok,
        lens,
        j,
        j_ok,
        row_ok[:, None] & j_ok[None, :],
        rows[:, None] * H + j[None, :],
    )


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
# (G=3) leaves the fourth gate slot zero, the RNN (G=1) the last three.


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
    (streamed and step paths) -> (BB, 4*BH) fp32."""
    acc = tl.zeros((BB, 4 * BH), dtype=tl.float32)
    for k0 in range(0, H, BK):
        kc = k0 + tl.arange(0, BK)
        h = ld(h_slot, rows[:, None] * H + kc[None, :], row_ok[:, None] & (kc[None, :] < H))
        acc += mm(h, w_fwd_tile(w_ptr, j, j_ok, kc, H, G, BH, DOT_F32), DOT_F32, PREC)
    return acc


@triton.jit
def w_fwd_resident(
    w_ptr, j, j_ok, H,
    G: tl.constexpr, BH: tl.constexpr, HP: tl.constexpr, HP2: tl.constexpr,
    DOT_F32: tl.constexpr,
):  # fmt: skip
    """The resident forward W_hh^T tile in two power-of-two K pieces, rows [0, HP) and
    [HP, HP + HP2) (HP2 = 0: one piece; the second value is then an unused placeholder).
    Two pieces let H=768 hold 768 rows instead of padding to 1024."""
    w1 = w_fwd_tile(w_ptr, j, j_ok, tl.arange(0, HP), H, G, BH, DOT_F32)
    if HP2 > 0:
        w2 = w_fwd_tile(w_ptr, j, j_ok, HP + tl.arange(0, HP2), H, G, BH, DOT_F32)
    else:
        w2 = w1
    return w1, w2


@triton.jit
def rec_fwd_resident(
    h_slot, rows, row_ok, H, w1, w2,
    HP: tl.constexpr, HP2: tl.constexpr, DOT_F32: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """h (B, H) slot @ the resident packed W_hh^T pieces -> (BB, 4*BH) fp32."""
    k1 = tl.arange(0, HP)
    acc = mm(
        ld(h_slot, rows[:, None] * H + k1[None, :], row_ok[:, None] & (k1[None, :] < H)),
        w1,
        DOT_F32,
        PREC,
    )
    if HP2 > 0:
        k2 = HP + tl.arange(0, HP2)
        acc += mm(
            ld(h_slot, rows[:, None] * H + k2[None, :], row_ok[:, None] & (k2[None, :] < H)),
            w2,
            DOT_F32,
            PREC,
        )
    return acc


@triton.jit
def w_bwd_tile(w_ptr, j, j_ok, k, H, G: tl.constexpr, DOT_F32: tl.constexpr):
    """(4, K, BH) tile [q, kk, jj] = W_hh[q*H + k[kk], j[jj]] for gate q < G, else 0."""
    q = tl.arange(0, 4)[:, None, None]
    ok = (q < G) & (k[None, :, None] < H) & j_ok[None, None, :]
    return load_w(w_ptr, q * H + k[None, :, None], j[None, None, :], ok, H, DOT_F32)


@triton.jit
def dg_tile(dg_t, rows, row_ok, k, H, G: tl.constexpr, NG: tl.constexpr):
    """(4, BB, K) fp32 [q, b, kk] = dG[rows[b], c(q)*H + k[kk]] of one step's (B, NG*H) gate
    gradients, where c(q) is the column group that meets W_hh's gate q: q itself for the LSTM
    and the RNN; r, z and then group 3 (W_hn h + b_hn) for the GRU."""
    q = tl.arange(0, 4)[:, None, None]
    col = q + (q // 2) * (NG - G)
    ok = (q < G) & row_ok[None, :, None] & (k[None, None, :] < H)
    return ld(dg_t, rows[None, :, None] * NG * H + col * H + k[None, None, :], ok)


@triton.jit
def w_bwd_resident(
    w_ptr, j, j_ok, H, G: tl.constexpr, HP: tl.constexpr, HP2: tl.constexpr,
    DOT_F32: tl.constexpr,
):  # fmt: skip
    """The resident backward W_hh tile (4, K, BH) in two K pieces, as w_fwd_resident."""
    w1 = w_bwd_tile(w_ptr, j, j_ok, tl.arange(0, HP), H, G, DOT_F32)
    if HP2 > 0:
        w2 = w_bwd_tile(w_ptr, j, j_ok, HP + tl.arange(0, HP2), H, G, DOT_F32)
    else:
        w2 = w1
    return w1, w2


@triton.jit
def rec_bwd_resident(
    dg_t, rows, row_ok, H, w1, w2, G: tl.constexpr, NG: tl.constexpr,
    HP: tl.constexpr, HP2: tl.constexpr, DOT_F32: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """dG_t (B, NG*H) @ the resident W_hh pieces -> (4, BB, BH) fp32 per-gate partial sums."""
    acc = mm(dg_tile(dg_t, rows, row_ok, tl.arange(0, HP), H, G, NG), w1, DOT_F32, PREC)
    if HP2 > 0:
        k2 = HP + tl.arange(0, HP2)
        acc += mm(dg_tile(dg_t, rows, row_ok, k2, H, G, NG), w2, DOT_F32, PREC)
    return acc


@triton.jit
def rec_bwd_chunked(
    dg_t, rows, row_ok, w_ptr, j, j_ok, H,
    G: tl.constexpr, NG: tl.constexpr, BB: tl.constexpr, BH: tl.constexpr, BK: tl.constexpr,
    DOT_F32: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """dG_t (B, NG*H) @ W_hh restricted to this program's units, K streamed in chunks of BK
    (streamed and step paths) -> (4, BB, BH) fp32 per-gate partial sums."""
    acc = tl.zeros((4, BB, BH), dtype=tl.float32)
    for k0 in range(0, H, BK):
        kc = k0 + tl.arange(0, BK)
        acc += mm(
            dg_tile(dg_t, rows, row_ok, kc, H, G, NG),
            w_bwd_tile(w_ptr, j, j_ok, kc, H, G, DOT_F32),
            DOT_F32,
            PREC,
        )
    return acc
