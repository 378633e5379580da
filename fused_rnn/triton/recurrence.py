"""The recurrence of every cell in Triton: ONE forward and ONE backward kernel body (the loop
over time, the recurrent GEMM of each path, lengths, state slots, saving), with the cell's
gate math picked by the ``CELL`` constexpr (:mod:`fused_rnn.triton.cell_math`), and the
``fused_rnn::triton_recurrence_fwd`` / ``triton_recurrence_bwd`` custom ops that launch them.

Only the recurrence lives here. The input projection (one GEMM over all steps, before the
loop) and the weight gradients (GEMMs after the backward loop) are plain torch in
:mod:`fused_rnn.triton.backend`.

Dimension legend: T steps, B batch, H hidden, G gate blocks of W_hh (4 LSTM i, f, g, o; 3 GRU
r, z, n; 1 RNN), NS fp32 activations saved per step and NG gate-gradient columns per step, in
units of H (:mod:`fused_rnn.triton.cells`). S state slots: T+1 when the forward saves for
backward (slot t holds the state before step t, slot 0 the initial state), else 2 (ping-pong,
slot t % 2). Each program owns batch rows [pid_b*BB, +BB) x hidden units [pid_h*BH, +BH).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .cell_math import GRU, LSTM, cell_bwd, cell_fwd
from .cells import BY_KID, CellSpec
from .common import (
    grid_barrier,
    ld,
    program_tile,
    rec_bwd_chunked,
    rec_bwd_resident,
    rec_fwd_chunked,
    rec_fwd_resident,
    split_gates,
    st,
    w_bwd_resident,
    w_fwd_resident,
)
from .config import choose_config
from .launch import F32, HALF_OR_F32, I64, check_args, run_recurrence

__all__ = ["recurrence_bwd", "recurrence_fwd"]


@triton.jit
def ld_cols(base, offs, mask, H, N: tl.constexpr):
    """base[offs + k*H] in fp32 for k = 0..3; the columns k >= N are not read (0)."""
    v0 = ld(base, offs, mask & (N > 0))
    v1 = ld(base, offs + H, mask & (N > 1))
    v2 = ld(base, offs + 2 * H, mask & (N > 2))
    v3 = ld(base, offs + 3 * H, mask & (N > 3))
    return v0, v1, v2, v3


@triton.jit
def st_cols(base, offs, mask, H, N: tl.constexpr, v0, v1, v2, v3):
    """base[offs + k*H] = v_k for k < N."""
    if N > 0:
        st(base, offs, mask, v0)
    if N > 1:
        st(base, offs + H, mask, v1)
    if N > 2:
        st(base, offs + 2 * H, mask, v2)
    if N > 3:
        st(base, offs + 3 * H, mask, v3)


@triton.jit(do_not_specialize=["slots", "save", "t_first", "n_iter"])
def _fwd_kernel(
    xp_ptr,  # (T, B, G*H) x @ W_ih^T for every step (no bias); W_hh's dtype or fp32
    w_ptr,  # (G*H, H) W_hh
    b_ptr,  # (NG*H,) fp32: packed bias (cells.CellSpec.packed_bias)
    len_ptr,  # (B,) int64, 1 <= len <= T
    hs_ptr,  # (S, B, H) fp32: h before step t at slot t % S
    cs_ptr,  # (S, B, H) fp32: c likewise (LSTM; unused otherwise)
    y_ptr,  # (T, B, H) xp dtype: out, h_t, 0 for t >= len
    gates_ptr,  # (T, B, NS*H) fp32: out, the activations backward needs (only when save)
    B,
    H,
    slots,
    save,
    counter_ptr,  # (cdiv(B, BB),) int32, zeros: grid barrier arrivals per batch block
    t_first,
    n_iter,
    CELL: tl.constexpr,
    G: tl.constexpr,
    NS: tl.constexpr,
    NG: tl.constexpr,
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
    rows, row_ok, lens, j, j_ok, m2, own = program_tile(len_ptr, B, H, BB, BH)
    pid_b = tl.program_id(1)
    n_h = tl.num_programs(0)
    xg = rows[:, None] * G * H + j[None, :]  # gate 0 of a (B, G*H) step of xp
    sg = rows[:, None] * NS * H + j[None, :]  # column 0 of a (B, NS*H) saved step
    b0, b1, b2, b3 = ld_cols(b_ptr, j[None, :], j_ok[None, :], H, NG)
    if RESIDENT:
        # packed W_hh^T tile (HP + HP2, 4*BH) of this program's units: loaded once, held on chip
        w1, w2 = w_fwd_resident(w_ptr, j, j_ok, H, G, BH, HP, HP2, DOT_F32)
    for s in range(n_iter):
        t = (t_first + s).to(tl.int64)
        if PERSISTENT:
            if s > 0:
                # every program's h for step t is in hs before anyone reads it
                grid_barrier(counter_ptr + pid_b, n_h * s)
        h_slot = hs_ptr + (t % slots) * B * H
        # recurrent GEMM: h_{t-1} @ W_hh^T for this program's units, gates side by side
        if RESIDENT:
            acc = rec_fwd_resident(h_slot, rows, row_ok, H, w1, w2, HP, HP2, DOT_F32, PREC)
        else:
            acc = rec_fwd_chunked(
                h_slot, rows, row_ok, w_ptr, j, j_ok, H, G, BB, BH, BK, DOT_F32, PREC
            )
        a0, a1, a2, a3 = split_gates(acc, BB, BH)
        x0, x1, x2, x3 = ld_cols(xp_ptr + t * B * G * H, xg, m2, H, G)
        h_prev = ld(h_slot, own, m2)
        if CELL == LSTM:
            c_prev = ld(cs_ptr + (t % slots) * B * H, own, m2)
        else:
            c_prev = h_prev
        h_new, c_new, s0, s1, s2, s3 = cell_fwd(
            CELL, x0, x1, x2, x3, a0, a1, a2, a3, b0, b1, b2, b3, h_prev, c_prev
        )
        # past a sequence's end: the state stays, the output is 0
        active = (t < lens)[:, None]
        nxt = ((t + 1) % slots) * B * H
        st(hs_ptr + nxt, own, m2, tl.where(active, h_new, h_prev))
        if CELL == LSTM:
            st(cs_ptr + nxt, own, m2, tl.where(active, c_new, c_prev))
        st(y_ptr + t * B * H, own, m2, tl.where(active, h_new, 0.0))
        if save != 0:
            st_cols(gates_ptr + t * B * NS * H, sg, m2, H, NS, s0, s1, s2, s3)


@triton.jit(do_not_specialize=["T", "t_first", "n_iter"])
def _bwd_kernel(
    w_ptr,  # (G*H, H) W_hh
    len_ptr,  # (B,) int64
    gates_ptr,  # (T, B, NS*H) fp32: the activations saved by the forward
    hs_ptr,  # (T+1, B, H) fp32: h before step t at slot t (GRU, RNN)
    cs_ptr,  # (T+1, B, H) fp32: c likewise (LSTM)
    dy_ptr,  # (T, B, H) any float dtype
    dg_ptr,  # (T, B, NG*H) fp32: out, gate gradients (0 for t >= len)
    dhs_ptr,  # (2, B, H) fp32: slot t % 2 = dL/dh_{t-1} from step t except via W_hh;
    #           slot T % 2 preset to dhn
    dcs_ptr,  # (2, B, H) fp32: slot t % 2 = dL/dc_{t-1}; slot T % 2 preset to dcn (LSTM)
    dh0_ptr,  # (B, H) fp32: out
    B,
    H,
    T,
    counter_ptr,
    t_first,
    n_iter,
    CELL: tl.constexpr,
    G: tl.constexpr,
    NS: tl.constexpr,
    NG: tl.constexpr,
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
    for this program's units (dG[t+1] comes from every program: barrier before; the GRU's
    n gate meets W_hh through its W_hn h + b_hn column); (B) for t >= 0 the pointwise backward
    of step t, writing dG[t] and the next slots; at t = -1, dh0."""
    rows, row_ok, lens, j, j_ok, m2, own = program_tile(len_ptr, B, H, BB, BH)
    pid_b = tl.program_id(1)
    n_h = tl.num_programs(0)
    sg = rows[:, None] * NS * H + j[None, :]
    dgo = rows[:, None] * NG * H + j[None, :]
    if RESIDENT:
        # W_hh tile (4, HP + HP2, BH): the columns of this program's units, gate by gate, on chip
        w1, w2 = w_bwd_resident(w_ptr, j, j_ok, H, G, HP, HP2, DOT_F32)
    for s in range(n_iter):
        t = (t_first - s).to(tl.int64)
        if PERSISTENT:
            if s > 0:
                grid_barrier(counter_ptr + pid_b, n_h * s)
        nxt = (t + 1) % 2 * B * H
        dh = ld(dhs_ptr + nxt, own, m2)
        if t + 1 < T:
            d_t = dg_ptr + (t + 1) * B * NG * H
            if RESIDENT:
                part = rec_bwd_resident(d_t, rows, row_ok, H, w1, w2, G, NG, HP, HP2, DOT_F32, PREC)
            else:
                part = rec_bwd_chunked(
                    d_t, rows, row_ok, w_ptr, j, j_ok, H, G, NG, BB, BH, BK, DOT_F32, PREC
                )
            dh += tl.sum(part, axis=0)
        if t >= 0:
            dh_tot = dh + ld(dy_ptr + t * B * H, own, m2)
            s0, s1, s2, s3 = ld_cols(gates_ptr + t * B * NS * H, sg, m2, H, NS)
            if CELL == LSTM:
                dc = ld(dcs_ptr + nxt, own, m2)
                c = ld(cs_ptr + (t + 1) * B * H, own, m2)
                c_prev = ld(cs_ptr + t * B * H, own, m2)
                h_prev, h = dh, dh
            elif CELL == GRU:
                h_prev = ld(hs_ptr + t * B * H, own, m2)
                h, dc, c, c_prev = h_prev, h_prev, h_prev, h_prev
            else:
                h = ld(hs_ptr + (t + 1) * B * H, own, m2)
                h_prev, dc, c, c_prev = h, h, h, h
            dh_prev, dc_prev, d0, d1, d2, d3 = cell_bwd(
                CELL, dh_tot, dc, s0, s1, s2, s3, h_prev, h, c, c_prev
            )
            # past a sequence's end the state passed through unchanged: so do its gradients
            active = (t < lens)[:, None]
            cur = t % 2 * B * H
            st(dhs_ptr + cur, own, m2, tl.where(active, dh_prev, dh))
            if CELL == LSTM:
                st(dcs_ptr + cur, own, m2, tl.where(active, dc_prev, dc))
            d0 = tl.where(active, d0, 0.0)
            d1 = tl.where(active, d1, 0.0)
            d2 = tl.where(active, d2, 0.0)
            d3 = tl.where(active, d3, 0.0)
            st_cols(dg_ptr + t * B * NG * H, dgo, m2, H, NG, d0, d1, d2, d3)
        else:
            st(dh0_ptr, own, m2, dh)


# ------------------------------------------------------------------------------ custom ops
def _spec(cell: int) -> CellSpec:
    if cell not in BY_KID:
        raise ValueError(f"triton recurrence: unknown cell id {cell}; known: {sorted(BY_KID)}")
    return BY_KID[cell]


def _fwd_shapes(spec: CellSpec, xp: Tensor, save: bool):
    """(y, hs, cs, gates) shapes and dtypes of the forward op's outputs, for the op and its
    fake."""
    T, B, GH = xp.shape
    H = GH // spec.G
    S = T + 1 if save else 2
    y = xp.new_empty((T, B, H))
    hs = xp.new_empty((S, B, H), dtype=torch.float32)
    cs = xp.new_empty((S, B, H) if spec.has_c else (0,), dtype=torch.float32)
    gates = xp.new_empty((T, B, spec.NS * H) if save else (0,), dtype=torch.float32)
    return y, hs, cs, gates


@torch.library.custom_op("fused_rnn::triton_recurrence_fwd", mutates_args=())
def recurrence_fwd(
    cell: int,
    xp: Tensor,
    w_hh: Tensor,
    bias: Tensor,
    lengths: Tensor,
    h0: Tensor,
    c0: Tensor | None,
    save: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The recurrence of cell ``cell`` (a CellSpec.kid) after the input projection.

    xp (T, B, G*H) x @ W_ih^T in w_hh's dtype or fp32, w_hh (G*H, H), bias (NG*H,) fp32
    (CellSpec.packed_bias), lengths (B,) int64, h0 (B, H), c0 (B, H) for the LSTM else None.
    Returns y (T, B, H) in xp's dtype and, all fp32, hs and cs (S, B, H) with S = T+1 if save
    else 2 (state before step t at slot t % S; the final state at T % S; cs is (0,) without
    c) and gates (T, B, NS*H) activations if save else an empty (0,) tensor.
    """
    spec = _spec(cell)
    T, B, GH = xp.shape
    H = GH // spec.G
    if (c0 is not None) != spec.has_c:
        raise ValueError(f"triton_recurrence_fwd: c0 must be given iff the cell has c ({spec})")
    check_args(
        "triton_recurrence_fwd",
        ("xp", xp, (T, B, spec.G * H), (w_hh.dtype, torch.float32)),
        ("w_hh", w_hh, (spec.G * H, H), HALF_OR_F32),
        ("bias", bias, (spec.NG * H,), F32),
        ("lengths", lengths, (B,), I64),
        ("h0", h0, (B, H), None),
        *([("c0", c0, (B, H), None)] if spec.has_c else []),
    )
    y, hs, cs, gates = _fwd_shapes(spec, xp, save)
    hs[0] = h0
    if spec.has_c:
        cs[0] = c0
    cfg = choose_config(False, B, H, w_hh.dtype, xp.device)
    args = (xp, w_hh, bias, lengths, hs, cs, y, gates, B, H, hs.shape[0], int(save))
    run_recurrence(_fwd_kernel, cfg, spec.constexprs(), B, H, args, 0, T, 1)
    return y, hs, cs, gates


@recurrence_fwd.register_fake
def _(cell, xp, w_hh, bias, lengths, h0, c0, save):
    return _fwd_shapes(_spec(cell), xp, save)


@torch.library.custom_op("fused_rnn::triton_recurrence_bwd", mutates_args=())
def recurrence_bwd(
    cell: int,
    w_hh: Tensor,
    lengths: Tensor,
    gates: Tensor,
    hs: Tensor,
    cs: Tensor,
    dy: Tensor,
    dhn: Tensor,
    dcn: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Backward of the recurrence: w_hh (G*H, H), lengths (B,), gates (T, B, NS*H), hs and cs
    (T+1, B, H) as saved by the forward (cs (0,) without c), dy (T, B, H), dhn (B, H), dcn
    (B, H) for the LSTM else None. Returns, all fp32, dG (T, B, NG*H) gate gradients (0 past
    each sequence's end), dh0 (B, H) and dc0 (B, H), or (0,) without c."""
    spec = _spec(cell)
    T, B, H = dy.shape
    if (dcn is not None) != spec.has_c:
        raise ValueError(f"triton_recurrence_bwd: dcn must be given iff the cell has c ({spec})")
    check_args(
        "triton_recurrence_bwd",
        ("dy", dy, (T, B, H), None),
        ("w_hh", w_hh, (spec.G * H, H), HALF_OR_F32),
        ("lengths", lengths, (B,), I64),
        ("gates", gates, (T, B, spec.NS * H), F32),
        ("hs", hs, (T + 1, B, H), F32),
        ("dhn", dhn, (B, H), None),
        *([("cs", cs, (T + 1, B, H), F32), ("dcn", dcn, (B, H), None)] if spec.has_c else []),
    )
    dg = gates.new_empty((T, B, spec.NG * H))
    dhs = gates.new_empty((2, B, H))
    dcs = gates.new_empty((2, B, H) if spec.has_c else (0,))
    dhs[T % 2] = dhn
    if spec.has_c:
        dcs[T % 2] = dcn
    dh0 = torch.empty_like(dhs[0])
    cfg = choose_config(True, B, H, w_hh.dtype, dy.device)
    args = (w_hh, lengths, gates, hs, cs, dy, dg, dhs, dcs, dh0, B, H, T)
    run_recurrence(_bwd_kernel, cfg, spec.constexprs(), B, H, args, T - 1, T + 1, -1)
    return dg, dh0, (dcs[0].clone() if spec.has_c else dcs)


@recurrence_bwd.register_fake
def _(cell, w_hh, lengths, gates, hs, cs, dy, dhn, dcn):
    spec = _spec(cell)
    T, B, H = dy.shape
    f32 = dict(dtype=torch.float32)
    dc0 = dy.new_empty((B, H) if spec.has_c else (0,), **f32)
    return dy.new_empty((T, B, spec.NG * H), **f32), dy.new_empty((B, H), **f32), dc0
