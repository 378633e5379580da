"""TritonBackend: the backend contract of :mod:`fused_rnn.backends` over the Triton recurrence
ops. Around the fused recurrence it runs the input projection for all steps as one GEMM
before the loop, and the weight and input gradients as single GEMMs after the backward loop.

Dimension legend: T steps, B batch, I input, H hidden, G gates (4 LSTM, 3 GRU).
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from . import gru as _gru
from . import lstm as _lstm
from .common import INTERPRET

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


def _fp32(t: Tensor | None, n: int, like: Tensor) -> Tensor:
    return torch.zeros(n, dtype=torch.float32, device=like.device) if t is None else t.float()


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
    """Fused LSTM/GRU recurrences in Triton (CUDA, or its CPU interpreter when
    TRITON_INTERPRET=1). fp16 / bf16 / fp32; no projection (proj_size), no fp64."""

    name = "triton"

    def available(self) -> str | None:
        if INTERPRET:
            return None
        if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
            return "TRITON_INTERPRET was set after fused_rnn.triton was imported; set it first"
        if not torch.cuda.is_available():
            return "no CUDA device (set TRITON_INTERPRET=1 before importing to run interpreted)"
        return None

    def supports(self, cell: str, x: Tensor, has_proj: bool) -> str | None:
        if cell not in ("lstm", "gru"):
            return f"unknown cell {cell!r}"
        if has_proj:
            return "LSTM with proj_size > 0 is not implemented in the triton backend"
        if x.dtype not in _DTYPES:
            return f"dtype {x.dtype} not supported (float16, bfloat16, float32)"
        want = "cpu" if INTERPRET else "cuda"
        if x.device.type != want:
            return f"tensors on {x.device.type}; the triton backend runs on {want} here"
        return None

    # -------------------------------------------------------------------------------- LSTM
    def lstm_fwd(self, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, need_saved):
        if w_hr is not None:
            raise ValueError("the triton backend does not support proj_size > 0")
        T, B, _ = x.shape
        H = w_hh.shape[1]
        bias = _fp32(b_ih, 4 * H, x) + _fp32(b_hh, 4 * H, x)
        lens = _lengths(lengths, T, B, x.device)
        w_hh = w_hh.contiguous()
        y, hs, cs, gates = _lstm.lstm_recurrence_fwd(
            _projection(x, w_ih), w_hh, bias, lens, h0.contiguous(), c0.contiguous(), need_saved
        )
        S = hs.shape[0]
        hn, cn = hs[T % S].to(x.dtype), cs[T % S].to(x.dtype)
        saved = (x, w_ih, w_hh, b_ih, b_hh, lens, gates, hs, cs) if need_saved else ()
        return y, hn, cn, saved

    def lstm_bwd(self, saved, dy, dhn, dcn):
        x, w_ih, w_hh, b_ih, b_hh, lens, gates, hs, cs = saved
        dg, dh0, dc0 = _lstm.lstm_recurrence_bwd(w_hh, lens, gates, cs, dy, dhn, dcn)
        dx, dw_ih = _input_grads(dg, x, w_ih)
        dw_hh = _hidden_grad(dg, hs, w_hh)
        db_ih, db_hh = _bias_grad(dg, b_ih), _bias_grad(dg, b_hh)
        return dx, dh0.to(x.dtype), dc0.to(x.dtype), dw_ih, dw_hh, db_ih, db_hh, None

    # --------------------------------------------------------------------------------- GRU
    def gru_fwd(self, x, h0, w_ih, w_hh, b_ih, b_hh, lengths, need_saved):
        T, B, _ = x.shape
        H = w_hh.shape[1]
        b_i, b_h = _fp32(b_ih, 3 * H, x), _fp32(b_hh, 3 * H, x)
        # r and z take both biases; n keeps b_in outside and b_hn inside r * (...)
        bias = torch.cat([b_i[: 2 * H] + b_h[: 2 * H], b_i[2 * H :], b_h[2 * H :]])
        lens = _lengths(lengths, T, B, x.device)
        xp, w_hh = _projection(x, w_ih), w_hh.contiguous()
        y, hs, gates = _gru.gru_recurrence_fwd(xp, w_hh, bias, lens, h0.contiguous(), need_saved)
        hn = hs[T % hs.shape[0]].to(x.dtype)
        saved = (x, w_ih, w_hh, b_ih, b_hh, lens, gates, hs) if need_saved else ()
        return y, hn, saved

    def gru_bwd(self, saved, dy, dhn):
        x, w_ih, w_hh, b_ih, b_hh, lens, gates, hs = saved
        H = w_hh.shape[1]
        dg, dh0 = _gru.gru_recurrence_bwd(w_hh, lens, gates, hs, dy, dhn)
        dgx = dg[..., : 3 * H]  # r, z, n pre-activations: the input side
        dgh = torch.cat([dg[..., : 2 * H], dg[..., 3 * H :]], dim=-1)  # r, z, W_hn h + b_hn
        dx, dw_ih = _input_grads(dgx, x, w_ih)
        dw_hh = _hidden_grad(dgh, hs, w_hh)
        return dx, dh0.to(x.dtype), dw_ih, dw_hh, _bias_grad(dgx, b_ih), _bias_grad(dgh, b_hh)
