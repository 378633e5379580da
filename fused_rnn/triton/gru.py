"""GRU recurrence in Triton: forward and backward kernels, their launchers, and the
``fused_rnn::triton_gru_fwd`` / ``triton_gru_bwd`` custom ops that wrap them.

Only the recurrence lives here; the input projection and the weight gradients are torch GEMMs
in :mod:`fused_rnn.triton.backend`.

Dimension legend: T steps, B batch, H hidden, gates in nn.GRU's order r, z, n (W_hh is
(3H, H)); nn.GRU's n = tanh(W_in x + b_in + r * (W_hn h + b_hn)) keeps b_hn inside the
product. S state slots: T+1 when saving for backward (slot t = h before step t), else 2.
Each program owns batch rows [pid_b*BB, +BB) x hidden units [pid_h*BH, +BH).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .common import (
    grid_barrier,
    ld,
    rec_bwd_chunked,
    rec_bwd_resident,
    rec_fwd_chunked,
    rec_fwd_resident,
    sigmoid,
    split_gates,
    st,
    tanh,
    w_bwd_resident,
    w_fwd_resident,
)
from .config import choose_config
from .launch import F32, HALF_OR_F32, I64, check_args, run_recurrence

__all__ = ["gru_recurrence_bwd", "gru_recurrence_fwd"]


@triton.jit(do_not_specialize=["slots", "save", "t_first", "n_iter"])
def _gru_fwd_kernel(
    xp_ptr,  # (T, B, 3H) x dtype: x @ W_ih^T for every step (no bias)
    w_ptr,  # (3H, H) W_hh
    b_ptr,  # (4H,) fp32: [b_ir + b_hr, b_iz + b_hz, b_in, b_hn] (zeros without bias)
    len_ptr,  # (B,) int64
    hs_ptr,  # (S, B, H) fp32: h before step t at slot t % S
    y_ptr,  # (T, B, H) x dtype: out, 0 for t >= len
    gates_ptr,  # (T, B, 4H) fp32: out when save: r, z, n and W_hn h + b_hn
    B,
    H,
    slots,
    save,
    counter_ptr,
    t_first,
    n_iter,
    BB: tl.constexpr,
    BH: tl.constexpr,
    HP: tl.constexpr,
    HP2: tl.constexpr,
    BK: tl.constexpr,
    PERSISTENT: tl.constexpr,
    RESIDENT: tl.constexpr,
    DOT_F32: tl.constexpr,
    PREC: tl.constexpr,
):
    pid_h = tl.program_id(0)
    pid_b = tl.program_id(1)
    n_h = tl.num_programs(0)
    rows = pid_b * BB + tl.arange(0, BB).to(tl.int64)
    row_ok = rows < B
    lens = tl.load(len_ptr + rows, mask=row_ok, other=0)
    j = pid_h * BH + tl.arange(0, BH)
    j_ok = j < H
    m2 = row_ok[:, None] & j_ok[None, :]
    own = rows[:, None] * H + j[None, :]
    xg = rows[:, None] * 3 * H + j[None, :]  # gate r of a (B, 3H) step
    sg = rows[:, None] * 4 * H + j[None, :]  # first column of a (B, 4H) saved step
    b_r = tl.load(b_ptr + j, mask=j_ok, other=0.0)[None, :]
    b_z = tl.load(b_ptr + H + j, mask=j_ok, other=0.0)[None, :]
    b_in = tl.load(b_ptr + 2 * H + j, mask=j_ok, other=0.0)[None, :]
    b_hn = tl.load(b_ptr + 3 * H + j, mask=j_ok, other=0.0)[None, :]
    if RESIDENT:
        # packed W_hh^T tile (HP + HP2, 4*BH), the fourth gate slot zero: loaded once, on chip
        w1, w2 = w_fwd_resident(w_ptr, j, j_ok, H, 3, BH, HP, HP2, DOT_F32)
    for s in range(n_iter):
        t = (t_first + s).to(tl.int64)
        if PERSISTENT:
            if s > 0:
                grid_barrier(counter_ptr + pid_b, n_h * s)
        h_slot = hs_ptr + (t % slots) * B * H
        if RESIDENT:
            acc = rec_fwd_resident(h_slot, rows, row_ok, H, w1, w2, HP, HP2, DOT_F32, PREC)
        else:
            acc = rec_fwd_chunked(
                h_slot, rows, row_ok, w_ptr, j, j_ok, H, 3, BB, BH, BK, DOT_F32, PREC
            )
        acc_r, acc_z, acc_n, _ = split_gates(acc, BB, BH)
        x_t = xp_ptr + t * B * H * 3
        r = sigmoid(ld(x_t, xg, m2) + acc_r + b_r)
        z = sigmoid(ld(x_t, xg + H, m2) + acc_z + b_z)
        hn = acc_n + b_hn
        n = tanh(ld(x_t, xg + 2 * H, m2) + b_in + r * hn)
        h_prev = ld(h_slot, own, m2)
        h_new = (1.0 - z) * n + z * h_prev
        active = (t < lens)[:, None]
        st(hs_ptr + ((t + 1) % slots) * B * H, own, m2, tl.where(active, h_new, h_prev))
        st(y_ptr + t * B * H, own, m2, tl.where(active, h_new, 0.0))
        if save != 0:
            gt = gates_ptr + t * B * H * 4
            st(gt, sg, m2, r)
            st(gt, sg + H, m2, z)
            st(gt, sg + 2 * H, m2, n)
            st(gt, sg + 3 * H, m2, hn)


@triton.jit(do_not_specialize=["T", "t_first", "n_iter"])
def _gru_bwd_kernel(
    w_ptr,  # (3H, H) W_hh
    len_ptr,  # (B,) int64
    gates_ptr,  # (T, B, 4H) fp32: r, z, n, W_hn h + b_hn from the forward
    hs_ptr,  # (T+1, B, H) fp32: h before step t at slot t
    dy_ptr,  # (T, B, H) dy dtype
    dg_ptr,  # (T, B, 4H) fp32: out, [dr, dz, dn] pre-activation grads and d(W_hn h + b_hn)
    dhs_ptr,  # (2, B, H) fp32: slot t % 2 = dL/dh_{t-1} from step t except via W_hh;
    #           slot T % 2 preset to dhn
    dh0_ptr,  # (B, H) fp32: out
    B,
    H,
    T,
    counter_ptr,
    t_first,
    n_iter,
    BB: tl.constexpr,
    BH: tl.constexpr,
    HP: tl.constexpr,
    HP2: tl.constexpr,
    BK: tl.constexpr,
    PERSISTENT: tl.constexpr,
    RESIDENT: tl.constexpr,
    DOT_F32: tl.constexpr,
    PREC: tl.constexpr,
):
    """Iteration for step t (t = T-1 down to -1): (A) dh_t = dhs[(t+1)%2] + the recurrent
    gradient of step t+1 (columns r, z and W_hn h of dG[t+1] through W_hh; barrier before);
    (B) for t >= 0 the pointwise backward of step t; at t = -1, dh0."""
    pid_h = tl.program_id(0)
    pid_b = tl.program_id(1)
    n_h = tl.num_programs(0)
    rows = pid_b * BB + tl.arange(0, BB).to(tl.int64)
    row_ok = rows < B
    lens = tl.load(len_ptr + rows, mask=row_ok, other=0)
    j = pid_h * BH + tl.arange(0, BH)
    j_ok = j < H
    m2 = row_ok[:, None] & j_ok[None, :]
    own = rows[:, None] * H + j[None, :]
    sg = rows[:, None] * 4 * H + j[None, :]
    BH4 = B * H * 4
    if RESIDENT:
        # W_hh tile (4, HP + HP2, BH): the columns of this program's units, gate by gate, on chip
        w1, w2 = w_bwd_resident(w_ptr, j, j_ok, H, 3, HP, HP2, DOT_F32)
    for s in range(n_iter):
        t = (t_first - s).to(tl.int64)
        if PERSISTENT:
            if s > 0:
                grid_barrier(counter_ptr + pid_b, n_h * s)
        nxt = (t + 1) % 2 * B * H
        dh = ld(dhs_ptr + nxt, own, m2)
        if t + 1 < T:
            # columns r, z and W_hn h + b_hn of dG[t+1] meet W_hh's gates r, z, n
            d_t = dg_ptr + (t + 1) * BH4
            if RESIDENT:
                part = rec_bwd_resident(d_t, rows, row_ok, H, w1, w2, 3, HP, HP2, DOT_F32, PREC)
            else:
                part = rec_bwd_chunked(
                    d_t, rows, row_ok, w_ptr, j, j_ok, H, 3, BB, BH, BK, DOT_F32, PREC
                )
            dh += tl.sum(part, axis=0)
        if t >= 0:
            g_t = gates_ptr + t * BH4
            r = ld(g_t, sg, m2)
            z = ld(g_t, sg + H, m2)
            n = ld(g_t, sg + 2 * H, m2)
            hn = ld(g_t, sg + 3 * H, m2)
            h_prev = ld(hs_ptr + t * B * H, own, m2)
            dh_tot = dh + ld(dy_ptr + t * B * H, own, m2)
            dn = dh_tot * (1.0 - z) * (1.0 - n * n)
            active = (t < lens)[:, None]
            st(dhs_ptr + t % 2 * B * H, own, m2, tl.where(active, dh_tot * z, dh))
            d_t = dg_ptr + t * BH4
            st(d_t, sg, m2, tl.where(active, dn * hn * r * (1.0 - r), 0.0))
            st(d_t, sg + H, m2, tl.where(active, dh_tot * (h_prev - n) * z * (1.0 - z), 0.0))
            st(d_t, sg + 2 * H, m2, tl.where(active, dn, 0.0))
            st(d_t, sg + 3 * H, m2, tl.where(active, dn * r, 0.0))
        else:
            st(dh0_ptr, own, m2, dh)


# ------------------------------------------------------------------------------ custom ops
@torch.library.custom_op("fused_rnn::triton_gru_fwd", mutates_args=())
def gru_recurrence_fwd(
    xp: Tensor, w_hh: Tensor, bias: Tensor, lengths: Tensor, h0: Tensor, save: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """The GRU recurrence after the input projection.

    xp (T, B, 3H) x @ W_ih^T, w_hh (3H, H), bias (4H,) fp32 = [b_ir + b_hr, b_iz + b_hz, b_in,
    b_hn], lengths (B,) int64, h0 (B, H). Returns y (T, B, H) in xp's dtype and, fp32, hs
    (S, B, H) with S = T+1 if save else 2 (h before step t at slot t % S; the final h at T % S)
    and gates (T, B, 4H) = r, z, n, W_hn h + b_hn if save else an empty (0,) tensor.
    """
    T, B, G3 = xp.shape
    H = G3 // 3
    check_args(
        "triton_gru_fwd",
        ("xp", xp, (T, B, 3 * H), HALF_OR_F32),
        ("w_hh", w_hh, (3 * H, H), (xp.dtype,)),
        ("bias", bias, (4 * H,), F32),
        ("lengths", lengths, (B,), I64),
        ("h0", h0, (B, H), None),
    )
    S = T + 1 if save else 2
    hs = xp.new_empty((S, B, H), dtype=torch.float32)
    hs[0] = h0
    y = xp.new_empty((T, B, H))
    gates = xp.new_empty((T, B, 4 * H) if save else (0,), dtype=torch.float32)
    cfg = choose_config(False, B, H, xp.dtype, xp.device)
    args = (xp, w_hh, bias, lengths, hs, y, gates, B, H, S, int(save))
    run_recurrence(_gru_fwd_kernel, cfg, B, H, args, 0, T, 1)
    return y, hs, gates


@gru_recurrence_fwd.register_fake
def _(xp, w_hh, bias, lengths, h0, save):
    T, B, G3 = xp.shape
    H = G3 // 3
    S = T + 1 if save else 2
    gates = xp.new_empty((T, B, 4 * H) if save else (0,), dtype=torch.float32)
    return xp.new_empty((T, B, H)), xp.new_empty((S, B, H), dtype=torch.float32), gates


@torch.library.custom_op("fused_rnn::triton_gru_bwd", mutates_args=())
def gru_recurrence_bwd(
    w_hh: Tensor, lengths: Tensor, gates: Tensor, hs: Tensor, dy: Tensor, dhn: Tensor
) -> tuple[Tensor, Tensor]:
    """Backward of the recurrence: w_hh (3H, H), lengths (B,), gates (T, B, 4H) and hs
    (T+1, B, H) as saved by the forward, dy (T, B, H), dhn (B, H). Returns, fp32, dG
    (T, B, 4H) = gradients of the r, z, n pre-activations and of W_hn h + b_hn (0 past each
    sequence's end), and dh0 (B, H)."""
    T, B, G4 = gates.shape
    H = G4 // 4
    check_args(
        "triton_gru_bwd",
        ("gates", gates, (T, B, 4 * H), F32),
        ("w_hh", w_hh, (3 * H, H), HALF_OR_F32),
        ("lengths", lengths, (B,), I64),
        ("hs", hs, (T + 1, B, H), F32),
        ("dy", dy, (T, B, H), None),
        ("dhn", dhn, (B, H), None),
    )
    dg = torch.empty_like(gates)
    dhs = gates.new_empty((2, B, H))
    dhs[T % 2] = dhn
    dh0 = torch.empty_like(dhs[0])
    cfg = choose_config(True, B, H, w_hh.dtype, gates.device)
    args = (w_hh, lengths, gates, hs, dy, dg, dhs, dh0, B, H, T)
    run_recurrence(_gru_bwd_kernel, cfg, B, H, args, T - 1, T + 1, -1)
    return dg, dh0


@gru_recurrence_bwd.register_fake
def _(w_hh, lengths, gates, hs, dy, dhn):
    return torch.empty_like(gates), dhn.new_empty(dhn.shape, dtype=torch.float32)
