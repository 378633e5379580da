"""TritonBackend: the backend contract of :mod:`fused_rnn.backends` over the one Triton
recurrence op pair, for every cell. Around the fused recurrence it runs the input projection
for all steps as one GEMM before the loop, and the weight and input gradients as single GEMMs
after the backward loop; LSTM proj_size folds W_hr into the recurrent weight
(:mod:`fused_rnn.triton.proj`).

Dimension legend: T steps, B batch, I input, H hidden, P LSTM output size (proj_size or H),
G gates (4 LSTM, 3 GRU, 1 RNN).
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from ..backends import as_cell
from ..cells import Cell
from . import proj
from .cells import SPECS
from .common import INTERPRET
from .recurrence import recurrence_bwd, recurrence_fwd

__all__ = ["TritonBackend"]

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _projection(x: Tensor, w_ih: Tensor) -> Tensor:
    """(T, B, I) @ (G*H, I)^T -> (T, B, G*H) in x's dtype: one GEMM for every step. The bias
    is added in fp32 inside the kernel."""
    T, B, _ = x.shape
    return (x.reshape(T * B, -1) @ w_ih.t()).view(T, B, -1)


def _lengths(lengths: Tensor | None, T: int, B: int, device) -> Tensor:
    if lengths is None:
        return torch.full((B,), T, dtype=torch.int64, device=device)
    return lengths.to(device=device, dtype=torch.int64).contiguous()


def _input_grads(dgx: Tensor, x: Tensor, w_ih: Tensor) -> tuple[Tensor, Tensor]:
    """dx = dG_x @ W_ih and dW_ih = sum_t dG_x[t]^T x[t], each one fp32 GEMM over all steps.
    dgx (T, B, G*H) fp32, x (T, B, I), w_ih (G*H, I) -> dx (T, B, I), dw_ih (G*H, I)."""
    T, B, n_in = x.shape
    d2 = dgx.reshape(T * B, -1)
    dx = (d2 @ w_ih.float()).view(T, B, n_in).to(x.dtype)
    dw_ih = (d2.t() @ x.reshape(T * B, n_in).float()).to(w_ih.dtype)
    return dx, dw_ih


def _hidden_grad(dgh: Tensor, hs: Tensor, w_hh: Tensor) -> Tensor:
    """dW_hh = sum_t dG_h[t]^T h_{t-1}: dgh (T, B, G*H) fp32, hs (T+1, B, H) fp32 states before
    each step (hs[T] unused) -> (G*H, H) in w_hh's dtype."""
    T, B, _ = dgh.shape
    return (dgh.reshape(T * B, -1).t() @ hs[:T].reshape(T * B, -1)).to(w_hh.dtype)


def _bias_grad(dg: Tensor, b: Tensor | None) -> Tensor | None:
    return None if b is None else dg.sum((0, 1)).to(b.dtype)


class TritonBackend:
    """Fused LSTM / GRU / RNN (tanh, relu) recurrences in Triton (CUDA, or its CPU interpreter
    when TRITON_INTERPRET=1), LSTM with proj_size too. fp16 / bf16 / fp32; no fp64."""

    name = "triton"

    def available(self) -> str | None:
        if INTERPRET:
            return None
        if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
            return "TRITON_INTERPRET was set after fused_rnn.triton was imported; set it first"
        if not torch.cuda.is_available():
            return "no CUDA device (set TRITON_INTERPRET=1 before importing to run interpreted)"
        return None

    def supports(self, cell: Cell | str, x: Tensor, has_proj: bool) -> str | None:
        name = as_cell(cell).name
        if name not in SPECS:
            return f"the {name} cell is not implemented by the triton backend"
        if has_proj and not SPECS[name].has_c:
            return f"proj_size applies to the LSTM only, not {name}"
        if x.dtype not in _DTYPES:
            return f"dtype {x.dtype} not supported (float16, bfloat16, float32)"
        want = "cpu" if INTERPRET else "cuda"
        if x.device.type != want:
            return f"tensors on {x.device.type}; the triton backend runs on {want} here"
        return None

    def fwd(self, cell: Cell, x, hx, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, need_saved):
        """The contract's forward (fused_rnn.backends): x (T, B, I), hx (h0 (B, P), c0 (B, H))
        for the LSTM else (h0 (B, H),) -> y (T, B, P), hn like hx, saved."""
        spec = SPECS[cell.name]
        T, B, _ = x.shape
        H = w_hh.shape[0] // spec.G
        lens = _lengths(lengths, T, B, x.device)
        xp, h0, w_rec = _projection(x, w_ih), hx[0], w_hh.contiguous()
        if w_hr is not None:
            xp, h0, w_rec = proj.fold_inputs(xp, h0, w_hh, w_hr)
        c0 = hx[1].contiguous() if spec.has_c else None
        bias = spec.packed_bias(b_ih, b_hh, H, x)
        y, hs, cs, gates = recurrence_fwd(
            spec.kid, xp, w_rec, bias, lens, h0.contiguous(), c0, need_saved
        )
        S = hs.shape[0]
        hn = [hs[T % S]] + ([cs[T % S]] if spec.has_c else [])
        if w_hr is not None:
            y, hn[0] = proj.project(y, w_hr), proj.project(hn[0], w_hr)
        hn = tuple(h.to(x.dtype) for h in hn)
        if not need_saved:
            return y.to(x.dtype), hn, ()
        return (
            y.to(x.dtype),
            hn,
            (x, hx[0], w_ih, w_hh, w_rec, b_ih, b_hh, w_hr, lens, gates, hs, cs),
        )

    def bwd(self, cell: Cell, saved, dy, dhn):
        """The contract's backward: dy (T, B, P), dhn like hx -> (dx, dhx, dw_ih, dw_hh,
        db_ih, db_hh, dw_hr), dw_hr None without a projection."""
        spec = SPECS[cell.name]
        x, h0, w_ih, w_hh, w_rec, b_ih, b_hh, w_hr, lens, gates, hs, cs = saved
        dy_r, dhn_r = dy, dhn[0]
        if w_hr is not None:  # the kernel's state is r: dL/dr = W_hr^T dL/dh
            dy_r, dhn_r = dy.float() @ w_hr.float(), dhn[0].float() @ w_hr.float()
        dcn = dhn[1].contiguous() if spec.has_c else None
        dg, dh0, dc0 = recurrence_bwd(
            spec.kid, w_rec, lens, gates, hs, cs, dy_r.contiguous(), dhn_r.contiguous(), dcn
        )
        dgx, dgh = spec.split_grads(dg)
        dx, dw_ih = _input_grads(dgx, x, w_ih)
        if w_hr is None:
            dw_hh, dw_hr = _hidden_grad(dgh, hs, w_hh), None
        else:
            dh0, dw_hh, dw_hr = proj.grads(dg, dy, dhn[0], h0, hs, lens, w_hh, w_hr)
        dhx = (dh0, dc0) if spec.has_c else (dh0,)
        dhx = tuple(d.to(x.dtype) for d in dhx)
        db_ih, db_hh = _bias_grad(dgx, b_ih), _bias_grad(dgh, b_hh)
        return dx, dhx, dw_ih, dw_hh, db_ih, db_hh, dw_hr
