"""LSTM recurrence in Triton: forward and backward kernels, their launchers, and the
``fused_rnn::triton_lstm_fwd`` / ``triton_lstm_bwd`` custom ops that wrap them.

Only the recurrence lives here. The input projection (one GEMM over all steps, before the
loop) and the weight gradients (GEMMs after the backward loop) are plain torch in
:mod:`fused_rnn.triton.backend`.

Dimension legend: T steps, B batch, H hidden, gates in nn.LSTM's order i, f, g, o (W_hh is
(4H, H), gate k's rows are k*H .. k*H+H-1). S state slots: T+1 when the forward saves for
backward (slot t holds the state before step t, slot 0 the initial state), else 2 (ping-pong,
slot t % 2). Each program owns batch rows [pid_b*BB, +BB) x hidden units [pid_h*BH, +BH).
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

__all__ = ["lstm_recurrence_bwd", "lstm_recurrence_fwd"]


@triton.jit(do_not_specialize=["slots", "save", "t_first", "n_iter"])
def _lstm_fwd_kernel(
    xp_ptr,  # (T, B, 4H) x dtype: x @ W_ih^T for every step
    w_ptr,  # (4H, H) W_hh, x dtype
    b_ptr,  # (4H,) fp32: b_ih + b_hh (zeros without bias)
    len_ptr,  # (B,) int64, 1 <= len <= T
    hs_ptr,  # (S, B, H) fp32: h before step t at slot t % S
    cs_ptr,  # (S, B, H) fp32: c likewise
    y_ptr,  # (T, B, H) x dtype: out, 0 for t >= len
    gates_ptr,  # (T, B, 4H) fp32: out, activations i, f, g, o (only when save)
    B,
    H,
    slots,
    save,
    counter_ptr,  # (cdiv(B, BB),) int32, zeros: grid barrier arrivals per batch block
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
    own = rows[:, None] * H + j[None, :]  # (BB, BH) offsets into a (B, H) slot
    gate = rows[:, None] * 4 * H + j[None, :]  # (BB, BH) offsets of gate i in a (B, 4H) step
    b_i = tl.load(b_ptr + j, mask=j_ok, other=0.0)[None, :]
    b_f = tl.load(b_ptr + H + j, mask=j_ok, other=0.0)[None, :]
    b_g = tl.load(b_ptr + 2 * H + j, mask=j_ok, other=0.0)[None, :]
    b_o = tl.load(b_ptr + 3 * H + j, mask=j_ok, other=0.0)[None, :]
    BH4 = B * H * 4
    if RESIDENT:
        # packed W_hh^T tile (HP + HP2, 4*BH) of this program's units: loaded once, held on chip
        w1, w2 = w_fwd_resident(w_ptr, j, j_ok, H, 4, BH, HP, HP2, DOT_F32)
    for s in range(n_iter):
        t = (t_first + s).to(tl.int64)
        if PERSISTENT:
            if s > 0:
                # every program's h for step t is in hs before anyone reads it
                grid_barrier(counter_ptr + pid_b, n_h * s)
        h_slot = hs_ptr + (t % slots) * B * H
        c_slot = cs_ptr + (t % slots) * B * H
        # recurrent GEMM: h_{t-1} @ W_hh^T for this program's units, gates side by side
        if RESIDENT:
            acc = rec_fwd_resident(h_slot, rows, row_ok, H, w1, w2, HP, HP2, DOT_F32, PREC)
        else:
            acc = rec_fwd_chunked(
                h_slot, rows, row_ok, w_ptr, j, j_ok, H, 4, BB, BH, BK, DOT_F32, PREC
            )
        acc_i, acc_f, acc_g, acc_o = split_gates(acc, BB, BH)
        # gates and state update, fp32
        x_t = xp_ptr + t * BH4
        i = sigmoid(ld(x_t, gate, m2) + acc_i + b_i)
        f = sigmoid(ld(x_t, gate + H, m2) + acc_f + b_f)
        g = tanh(ld(x_t, gate + 2 * H, m2) + acc_g + b_g)
        o = sigmoid(ld(x_t, gate + 3 * H, m2) + acc_o + b_o)
        c_prev = ld(c_slot, own, m2)
        h_prev = ld(h_slot, own, m2)
        c_new = f * c_prev + i * g
        h_new = o * tanh(c_new)
        # past a sequence's end: the state stays, the output is 0
        active = (t < lens)[:, None]
        nxt = ((t + 1) % slots) * B * H
        st(hs_ptr + nxt, own, m2, tl.where(active, h_new, h_prev))
        st(cs_ptr + nxt, own, m2, tl.where(active, c_new, c_prev))
        st(y_ptr + t * B * H, own, m2, tl.where(active, h_new, 0.0))
        if save != 0:
            gt = gates_ptr + t * BH4
            st(gt, gate, m2, i)
            st(gt, gate + H, m2, f)
            st(gt, gate + 2 * H, m2, g)
            st(gt, gate + 3 * H, m2, o)


@triton.jit(do_not_specialize=["T", "t_first", "n_iter"])
def _lstm_bwd_kernel(
    w_ptr,  # (4H, H) W_hh
    len_ptr,  # (B,) int64
    gates_ptr,  # (T, B, 4H) fp32: activations i, f, g, o from the forward
    cs_ptr,  # (T+1, B, H) fp32: c before step t at slot t
    dy_ptr,  # (T, B, H) dy dtype
    dg_ptr,  # (T, B, 4H) fp32: out, gradient of the gate pre-activations (0 for t >= len)
    dhs_ptr,  # (2, B, H) fp32: slot t % 2 = dL/dh_{t-1} from step t except via W_hh;
    #           slot T % 2 preset to dhn
    dcs_ptr,  # (2, B, H) fp32: slot t % 2 = dL/dc_{t-1}; slot T % 2 preset to dcn
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
    """Iteration for step t (t = T-1 down to -1): (A) dh_t = dhs[(t+1)%2] + dG[t+1] @ W_hh
    for this program's units (dG[t+1] comes from every program: barrier before); (B) for t >= 0
    the pointwise backward of step t, writing dG[t] and the next slots; at t = -1, dh0."""
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
    gate = rows[:, None] * 4 * H + j[None, :]
    BH4 = B * H * 4
    if RESIDENT:
        # W_hh tile (4, HP + HP2, BH): the columns of this program's units, gate by gate, on chip
        w1, w2 = w_bwd_resident(w_ptr, j, j_ok, H, 4, HP, HP2, DOT_F32)
    for s in range(n_iter):
        t = (t_first - s).to(tl.int64)
        if PERSISTENT:
            if s > 0:
                grid_barrier(counter_ptr + pid_b, n_h * s)
        nxt = (t + 1) % 2 * B * H
        dh = ld(dhs_ptr + nxt, own, m2)
        if t + 1 < T:
            d_t = dg_ptr + (t + 1) * BH4
            if RESIDENT:
                part = rec_bwd_resident(d_t, rows, row_ok, H, w1, w2, 4, HP, HP2, DOT_F32, PREC)
            else:
                part = rec_bwd_chunked(
                    d_t, rows, row_ok, w_ptr, j, j_ok, H, 4, BB, BH, BK, DOT_F32, PREC
                )
            dh += tl.sum(part, axis=0)
        if t >= 0:
            dc = ld(dcs_ptr + nxt, own, m2)
            g_t = gates_ptr + t * BH4
            i = ld(g_t, gate, m2)
            f = ld(g_t, gate + H, m2)
            g = ld(g_t, gate + 2 * H, m2)
            o = ld(g_t, gate + 3 * H, m2)
            c_new = ld(cs_ptr + (t + 1) * B * H, own, m2)
            c_prev = ld(cs_ptr + t * B * H, own, m2)
            dh_tot = dh + ld(dy_ptr + t * B * H, own, m2)
            tc = tanh(c_new)
            dct = dc + dh_tot * o * (1.0 - tc * tc)
            active = (t < lens)[:, None]
            cur = t % 2 * B * H
            # past a sequence's end the state passed through unchanged: so do its gradients
            st(dcs_ptr + cur, own, m2, tl.where(active, dct * f, dc))
            st(dhs_ptr + cur, own, m2, tl.where(active, 0.0, dh))
            d_t = dg_ptr + t * BH4
            st(d_t, gate, m2, tl.where(active, dct * g * i * (1.0 - i), 0.0))
            st(d_t, gate + H, m2, tl.where(active, dct * c_prev * f * (1.0 - f), 0.0))
            st(d_t, gate + 2 * H, m2, tl.where(active, dct * i * (1.0 - g * g), 0.0))
            st(d_t, gate + 3 * H, m2, tl.where(active, dh_tot * tc * o * (1.0 - o), 0.0))
        else:
            st(dh0_ptr, own, m2, dh)


# ------------------------------------------------------------------------------ custom ops
@torch.library.custom_op("fused_rnn::triton_lstm_fwd", mutates_args=())
def lstm_recurrence_fwd(
    xp: Tensor, w_hh: Tensor, bias: Tensor, lengths: Tensor, h0: Tensor, c0: Tensor, save: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The LSTM recurrence after the input projection.

    xp (T, B, 4H) x @ W_ih^T, w_hh (4H, H), bias (4H,) fp32 = b_ih + b_hh, lengths (B,) int64,
    h0 (B, H), c0 (B, H). Returns y (T, B, H) in xp's dtype and, all fp32, hs and cs (S, B, H)
    with S = T+1 if save else 2 (state before step t at slot t % S; the final state at T % S)
    and gates (T, B, 4H) activations if save else an empty (0,) tensor.
    """
    T, B, G4 = xp.shape
    H = G4 // 4
    check_args(
        "triton_lstm_fwd",
        ("xp", xp, (T, B, 4 * H), HALF_OR_F32),
        ("w_hh", w_hh, (4 * H, H), (xp.dtype,)),
        ("bias", bias, (4 * H,), F32),
        ("lengths", lengths, (B,), I64),
        ("h0", h0, (B, H), None),
        ("c0", c0, (B, H), None),
    )
    S = T + 1 if save else 2
    hs = xp.new_empty((S, B, H), dtype=torch.float32)
    cs = torch.empty_like(hs)
    hs[0] = h0
    cs[0] = c0
    y = xp.new_empty((T, B, H))
    gates = xp.new_empty((T, B, G4) if save else (0,), dtype=torch.float32)
    cfg = choose_config(False, B, H, xp.dtype, xp.device)
    args = (xp, w_hh, bias, lengths, hs, cs, y, gates, B, H, S, int(save))
    run_recurrence(_lstm_fwd_kernel, cfg, B, H, args, 0, T, 1)
    return y, hs, cs, gates


@lstm_recurrence_fwd.register_fake
def _(xp, w_hh, bias, lengths, h0, c0, save):
    T, B, G4 = xp.shape
    S = T + 1 if save else 2
    hs = xp.new_empty((S, B, G4 // 4), dtype=torch.float32)
    gates = xp.new_empty((T, B, G4) if save else (0,), dtype=torch.float32)
    return xp.new_empty((T, B, G4 // 4)), hs, torch.empty_like(hs), gates


@torch.library.custom_op("fused_rnn::triton_lstm_bwd", mutates_args=())
def lstm_recurrence_bwd(
    w_hh: Tensor, lengths: Tensor, gates: Tensor, cs: Tensor, dy: Tensor, dhn: Tensor, dcn: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Backward of the recurrence: w_hh (4H, H), lengths (B,), gates (T, B, 4H) and cs
    (T+1, B, H) as saved by the forward, dy (T, B, H), dhn (B, H), dcn (B, H).
    Returns, all fp32, dG (T, B, 4H) gradient of the gate pre-activations (0 past each
    sequence's end), dh0 (B, H) and dc0 (B, H)."""
    T, B, G4 = gates.shape
    H = G4 // 4
    check_args(
        "triton_lstm_bwd",
        ("gates", gates, (T, B, 4 * H), F32),
        ("w_hh", w_hh, (4 * H, H), HALF_OR_F32),
        ("lengths", lengths, (B,), I64),
        ("cs", cs, (T + 1, B, H), F32),
        ("dy", dy, (T, B, H), None),
        ("dhn", dhn, (B, H), None),
        ("dcn", dcn, (B, H), None),
    )
    dg = torch.empty_like(gates)
    dhs = gates.new_empty((2, B, H))
    dcs = torch.empty_like(dhs)
    dhs[T % 2] = dhn
    dcs[T % 2] = dcn
    dh0 = torch.empty_like(dhs[0])
    cfg = choose_config(True, B, H, w_hh.dtype, gates.device)
    args = (w_hh, lengths, gates, cs, dy, dg, dhs, dcs, dh0, B, H, T)
    run_recurrence(_lstm_bwd_kernel, cfg, B, H, args, T - 1, T + 1, -1)
    return dg, dh0, dcs[0].clone()


@lstm_recurrence_bwd.register_fake
def _(w_hh, lengths, gates, cs, dy, dhn, dcn):
    B, H = dhn.shape
    return (
        torch.empty_like(gates),
        dhn.new_empty((B, H), dtype=torch.float32),
        dhn.new_empty((B, H), dtype=torch.float32),
    )
