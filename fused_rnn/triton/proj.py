"""LSTM ``proj_size`` around the Triton recurrence, by folding W_hr into the recurrent weight.

nn.LSTM with a projection carries h_t = W_hr r_t, r_t = o_t * tanh(c_t), so the recurrent term
is W_hh h_{t-1} = (W_hh W_hr) r_{t-1}. The kernel therefore runs the plain LSTM recurrence on
the state r (B, H) with W_eff = W_hh W_hr (4H, H), unchanged on every path (nothing extra to
hold on chip); the projections that are not on the sequential path are torch GEMMs over all
steps: y = r W_hr^T after the loop, and the step-0 term W_hh h0 (h0 is given in P space) is
added to the input projection before it, with r_{-1} = 0.

Dimension legend: T steps, B batch, H hidden, P proj_size (< H).
"""

from __future__ import annotations

import torch
from torch import Tensor


def fold_inputs(xp: Tensor, h0: Tensor, w_hh: Tensor, w_hr: Tensor):
    """Forward inputs of the folded recurrence: xp (T, B, 4H) x @ W_ih^T, h0 (B, P), w_hh
    (4H, P), w_hr (P, H) -> xp (T, B, 4H) fp32 with W_hh h0 added to step 0, r_{-1} (B, H)
    zeros, W_eff (4H, H) = W_hh W_hr in w_hh's dtype."""
    xp = xp.float()
    xp[0] += h0.float() @ w_hh.float().t()
    r0 = xp.new_zeros((h0.shape[0], w_hr.shape[1]))
    return xp, r0, (w_hh.float() @ w_hr.float()).to(w_hh.dtype)


def project(r: Tensor, w_hr: Tensor) -> Tensor:
    """h = r W_hr^T in fp32: r (..., H) fp32 -> (..., P). Rows of r that are 0 (steps past a
    sequence's end) stay exactly 0."""
    return r @ w_hr.float().t()


def grads(dg, dy, dhn, h0, rs, lengths, w_hh, w_hr) -> tuple[Tensor, Tensor, Tensor]:
    """dh0, dW_hh, dW_hr after the folded backward.

    dg (T, B, 4H) fp32 gate gradients (0 past each sequence's end), dy (T, B, P), dhn (B, P),
    h0 (B, P), rs (T+1, B, H) fp32 the r states (rs[t+1] = r_t), lengths (B,) int64,
    w_hh (4H, P), w_hr (P, H) -> dh0 (B, P) fp32, dW_hh (4H, P), dW_hr (P, H)."""
    T, B, _ = dy.shape
    wh = w_hh.float()
    # h0 enters step 0 only, which every sequence runs (lengths >= 1)
    dh0 = dg[0] @ wh
    h_prev = project(rs[:T], w_hr)
    h_prev[0] = h0.float()
    dw_hh = dg.reshape(T * B, -1).t() @ h_prev.reshape(T * B, -1)
    # dL/dh_t on each sequence's valid steps: dy_t, step t+1's recurrent term, dhn at the last
    t = torch.arange(T, device=dy.device)[:, None, None]
    n = lengths[None, :, None]
    dh = dy.float().clone()
    dh[:-1] += dg[1:] @ wh
    dh = torch.where(t == n - 1, dh + dhn.float(), dh)
    dh = torch.where(t < n, dh, 0.0)
    dw_hr = dh.reshape(T * B, -1).t() @ rs[1:].reshape(T * B, -1)
    return dh0, dw_hh.to(w_hh.dtype), dw_hr.to(w_hr.dtype)
