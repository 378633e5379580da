"""Pure-PyTorch reference backend: the test oracle and the last-resort fallback.

Implements the backend contract of :mod:`fused_rnn.backends` with an explicit backward (no
autograd through the time loop), so the contract itself is exercised wherever torch runs.

Dimension legend: T steps, B batch, I input, H hidden, P LSTM output (proj_size or H).
Arithmetic runs in the "acc" dtype: float32 for float16 / bfloat16 inputs, else the input's dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["ReferenceBackend", "gru_ref", "lstm_ref"]


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _up(t: Tensor | None, dt: torch.dtype) -> Tensor | None:
    return None if t is None else t.to(dt)


def _step_masks(lengths: Tensor | None, T: int, B: int, device) -> Tensor | None:
    """(T, B, 1) bool: True where step t is inside sequence b. None when all are full."""
    if lengths is None:
        return None
    t = torch.arange(T, device=device).unsqueeze(1)
    return (t < lengths.to(device).unsqueeze(0)).unsqueeze(-1)


def _input_projection(x: Tensor, w_ih: Tensor, bias: Tensor | None) -> Tensor:
    """(T, B, I) x (G*H, I) -> (T, B, G*H): one GEMM for every step, hoisted out of the loop."""
    T, B, _ = x.shape
    flat = x.reshape(T * B, -1)
    out = flat @ w_ih.t() if bias is None else torch.addmm(bias, flat, w_ih.t())
    return out.view(T, B, -1)


def _masked(m: Tensor | None, new: Tensor, old: Tensor) -> Tensor:
    return new if m is None else torch.where(m, new, old)


def _weight_grads(dg: Tensor, inp: Tensor) -> Tensor:
    """sum_t dg[t]^T @ inp[t]: (T, B, G) x (T, B, K) -> (G, K), as one GEMM."""
    return dg.reshape(-1, dg.shape[-1]).t() @ inp.reshape(-1, inp.shape[-1])


# --------------------------------------------------------------------------------------- LSTM
def lstm_ref_fwd(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, need_saved):
    """LSTM, one layer, one direction. Shapes as in the contract (fused_rnn.backends)."""
    dt, acc = x.dtype, _acc_dtype(x.dtype)
    T, B, _ = x.shape
    H = w_hh.shape[0] // 4
    xa, w_ih_a, w_hh_a, w_hr_a = _up(x, acc), _up(w_ih, acc), _up(w_hh, acc), _up(w_hr, acc)
    bias = None if b_ih is None else b_ih.to(acc) + b_hh.to(acc)
    xp = _input_projection(xa, w_ih_a, bias)
    masks = _step_masks(lengths, T, B, x.device)
    h, c = h0.to(acc), c0.to(acc)
    P = h.shape[1]
    ys = x.new_empty((T, B, P), dtype=acc)
    gates_all = x.new_empty((T, B, 4 * H), dtype=acc) if need_saved else None
    cs = x.new_empty((T, B, H), dtype=acc) if need_saved else None
    hs = x.new_empty((T, B, P), dtype=acc) if need_saved else None
    w_hh_t = w_hh_a.t()
    for t, xp_t in enumerate(xp.unbind(0)):
        g = torch.addmm(xp_t, h, w_hh_t)
        i, f, gg, o = g.chunk(4, 1)
        i, f, gg, o = i.sigmoid(), f.sigmoid(), gg.tanh(), o.sigmoid()
        c_new = f * c + i * gg
        h_new = o * c_new.tanh()
        if w_hr_a is not None:
            h_new = h_new @ w_hr_a.t()
        m = None if masks is None else masks[t]
        c = _masked(m, c_new, c)
        h = _masked(m, h_new, h)
        ys[t] = h_new if m is None else torch.where(m, h_new, 0.0)
        if need_saved:
            gates_all[t] = torch.cat((i, f, gg, o), 1)
            cs[t], hs[t] = c, h
    saved = ()
    if need_saved:
        lens = lengths if lengths is not None else x.new_empty(0, dtype=torch.long)
        saved = (
            x,
            h0,
            c0,
            w_ih,
            w_hh,
            w_hr if w_hr is not None else x.new_empty(0),
            lens,
            gates_all,
            cs,
            hs,
        )
    return ys.to(dt), h.to(dt), c.to(dt), saved


def lstm_ref_bwd(saved, dy, dhn, dcn):
    x, h0, c0, w_ih, w_hh, w_hr, lens, gates_all, cs, hs = saved
    dt, acc = x.dtype, _acc_dtype(x.dtype)
    T, B, _ = x.shape
    has_proj = w_hr.numel() > 0
    masks = _step_masks(lens if lens.numel() else None, T, B, x.device)
    w_hh_a = w_hh.to(acc)
    w_hr_a = w_hr.to(acc) if has_proj else None
    dh, dc = dhn.to(acc), dcn.to(acc)
    dy = dy.to(acc)
    dgates = torch.empty_like(gates_all)
    dw_hr = torch.zeros_like(w_hr_a) if has_proj else None
    h0a, c0a = h0.to(acc), c0.to(acc)
    for t in range(T - 1, -1, -1):
        m = None if masks is None else masks[t]
        i, f, gg, o = gates_all[t].chunk(4, 1)
        c_t = cs[t]
        c_prev = cs[t - 1] if t > 0 else c0a
        dh_t = dh + (dy[t] if m is None else torch.where(m, dy[t], 0.0))
        tc = c_t.tanh()
        if has_proj:
            hr = o * tc
            dw_hr += _masked(m, dh_t, 0.0).t() @ hr
            dhr = dh_t @ w_hr_a
        else:
            dhr = dh_t
        dc_t = dc + dhr * o * (1 - tc * tc)
        dg = torch.cat(
            (
                dc_t * gg * i * (1 - i),
                dc_t * c_prev * f * (1 - f),
                dc_t * i * (1 - gg * gg),
                dhr * tc * o * (1 - o),
            ),
            1,
        )
        if m is not None:
            dg = torch.where(m, dg, 0.0)
        dgates[t] = dg
        dh_prev = dg @ w_hh_a
        dc_prev = dc_t * f
        dh = _masked(m, dh_prev, dh)
        dc = _masked(m, dc_prev, dc)
    h_prev = torch.cat((h0a.unsqueeze(0), hs[:-1]), 0)
    dx = (dgates.reshape(T * B, -1) @ w_ih.to(acc)).view(T, B, -1)
    dw_ih = _weight_grads(dgates, x.to(acc))
    dw_hh = _weight_grads(dgates, h_prev)
    db = dgates.sum((0, 1)).to(w_ih.dtype)
    return (
        dx.to(dt),
        dh.to(h0.dtype),
        dc.to(c0.dtype),
        dw_ih.to(w_ih.dtype),
        dw_hh.to(w_hh.dtype),
        db,
        db,
        None if dw_hr is None else dw_hr.to(w_hr.dtype),
    )


# ---------------------------------------------------------------------------------------- GRU
def gru_ref_fwd(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, need_saved):
    """GRU, one layer, one direction: nn.GRU's equations with the separate b_hn."""
    dt, acc = x.dtype, _acc_dtype(x.dtype)
    T, B, _ = x.shape
    H = w_hh.shape[1]
    xp = _input_projection(_up(x, acc), _up(w_ih, acc), _up(b_ih, acc))
    w_hh_t = w_hh.to(acc).t()
    b_hh_a = _up(b_hh, acc)
    masks = _step_masks(lengths, T, B, x.device)
    h = h0.to(acc)
    ys = x.new_empty((T, B, H), dtype=acc)
    gates_all = x.new_empty((T, B, 3 * H), dtype=acc) if need_saved else None
    ghn_all = x.new_empty((T, B, H), dtype=acc) if need_saved else None
    hs = x.new_empty((T, B, H), dtype=acc) if need_saved else None
    for t, xp_t in enumerate(xp.unbind(0)):
        gh = h @ w_hh_t if b_hh_a is None else torch.addmm(b_hh_a, h, w_hh_t)
        xr, xz, xn = xp_t.chunk(3, 1)
        hr, hz, hn = gh.chunk(3, 1)
        r = (xr + hr).sigmoid()
        z = (xz + hz).sigmoid()
        n = (xn + r * hn).tanh()
        h_new = n + z * (h - n)
        m = None if masks is None else masks[t]
        h = _masked(m, h_new, h)
        ys[t] = h_new if m is None else torch.where(m, h_new, 0.0)
        if need_saved:
            gates_all[t] = torch.cat((r, z, n), 1)
            ghn_all[t], hs[t] = hn, h
    saved = ()
    if need_saved:
        lens = lengths if lengths is not None else x.new_empty(0, dtype=torch.long)
        saved = (x, h0, w_ih, w_hh, lens, gates_all, ghn_all, hs)
    return ys.to(dt), h.to(dt), saved


def gru_ref_bwd(saved, dy, dhn):
    x, h0, w_ih, w_hh, lens, gates_all, ghn_all, hs = saved
    dt, acc = x.dtype, _acc_dtype(x.dtype)
    T, B, _ = x.shape
    masks = _step_masks(lens if lens.numel() else None, T, B, x.device)
    w_hh_a = w_hh.to(acc)
    h0a = h0.to(acc)
    dh = dhn.to(acc)
    dy = dy.to(acc)
    dgi = torch.empty_like(gates_all)  # grads of the input-side pre-activations (r, z, n)
    dgh = torch.empty_like(gates_all)  # grads of the hidden-side pre-activations (r, z, hn)
    for t in range(T - 1, -1, -1):
        m = None if masks is None else masks[t]
        r, z, n = gates_all[t].chunk(3, 1)
        h_prev = hs[t - 1] if t > 0 else h0a
        dh_t = dh + (dy[t] if m is None else torch.where(m, dy[t], 0.0))
        dn_pre = dh_t * (1 - z) * (1 - n * n)
        dz_pre = dh_t * (h_prev - n) * z * (1 - z)
        dr_pre = dn_pre * ghn_all[t] * r * (1 - r)
        gi = torch.cat((dr_pre, dz_pre, dn_pre), 1)
        gh = torch.cat((dr_pre, dz_pre, dn_pre * r), 1)
        if m is not None:
            gi, gh = torch.where(m, gi, 0.0), torch.where(m, gh, 0.0)
        dgi[t], dgh[t] = gi, gh
        dh_prev = dh_t * z + gh @ w_hh_a
        dh = _masked(m, dh_prev, dh)
    h_prev_all = torch.cat((h0a.unsqueeze(0), hs[:-1]), 0)
    dx = (dgi.reshape(T * B, -1) @ w_ih.to(acc)).view(T, B, -1)
    dw_ih = _weight_grads(dgi, x.to(acc))
    dw_hh = _weight_grads(dgh, h_prev_all)
    db_ih = dgi.sum((0, 1))
    db_hh = dgh.sum((0, 1))
    return (
        dx.to(dt),
        dh.to(h0.dtype),
        dw_ih.to(w_ih.dtype),
        dw_hh.to(w_hh.dtype),
        db_ih.to(w_ih.dtype),
        db_hh.to(w_ih.dtype),
    )


lstm_ref = lstm_ref_fwd
gru_ref = gru_ref_fwd


class ReferenceBackend:
    """The contract in plain PyTorch: runs on any device and dtype torch supports."""

    name = "reference"

    def available(self) -> str | None:
        return None

    def supports(self, cell: str, x: Tensor, has_proj: bool) -> str | None:
        return None

    lstm_fwd = staticmethod(lstm_ref_fwd)
    lstm_bwd = staticmethod(lstm_ref_bwd)
    gru_fwd = staticmethod(gru_ref_fwd)
    gru_bwd = staticmethod(gru_ref_bwd)
