"""The autograd layer, written once over the backend contract (see fused_rnn.backends).

``LSTMFunction`` and ``GRUFunction`` differ only in which contract functions they call and how
many recurrent states they carry; both run one layer in one direction over a padded,
time-major sequence.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .backends import Backend

__all__ = ["GRUFunction", "LSTMFunction", "gru_layer", "lstm_layer"]


class LSTMFunction(torch.autograd.Function):
    """apply(backend, lengths, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr) -> (y, hn, cn)."""

    @staticmethod
    def forward(ctx, backend: Backend, lengths, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr):
        need = any(ctx.needs_input_grad[2:])
        y, hn, cn, saved = backend.lstm_fwd(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, need)
        ctx.backend = backend
        ctx.present = (b_ih is not None, b_hh is not None, w_hr is not None)
        ctx.save_for_backward(*saved)
        return y, hn, cn

    @staticmethod
    def backward(ctx, dy: Tensor, dhn: Tensor, dcn: Tensor):
        dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr = ctx.backend.lstm_bwd(
            ctx.saved_tensors, dy.contiguous(), dhn.contiguous(), dcn.contiguous()
        )
        has_bih, has_bhh, has_hr = ctx.present
        return (
            None,
            None,
            dx,
            dh0,
            dc0,
            dw_ih,
            dw_hh,
            db_ih if has_bih else None,
            db_hh if has_bhh else None,
            dw_hr if has_hr else None,
        )


class GRUFunction(torch.autograd.Function):
    """apply(backend, lengths, x, h0, w_ih, w_hh, b_ih, b_hh) -> (y, hn)."""

    @staticmethod
    def forward(ctx, backend: Backend, lengths, x, h0, w_ih, w_hh, b_ih, b_hh):
        need = any(ctx.needs_input_grad[2:])
        y, hn, saved = backend.gru_fwd(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, need)
        ctx.backend = backend
        ctx.present = (b_ih is not None, b_hh is not None)
        ctx.save_for_backward(*saved)
        return y, hn

    @staticmethod
    def backward(ctx, dy: Tensor, dhn: Tensor):
        dx, dh0, dw_ih, dw_hh, db_ih, db_hh = ctx.backend.gru_bwd(
            ctx.saved_tensors, dy.contiguous(), dhn.contiguous()
        )
        has_bih, has_bhh = ctx.present
        return (
            None,
            None,
            dx,
            dh0,
            dw_ih,
            dw_hh,
            db_ih if has_bih else None,
            db_hh if has_bhh else None,
        )


def _needs_grad(tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def lstm_layer(backend: Backend, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths):
    """One LSTM layer, one direction. x (T, B, I) -> y (T, B, P), hn (B, P), cn (B, H).

    Without any gradient to compute, the backend is called directly with need_saved=False, so
    inference stores no activations.
    """
    args = (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)
    if _needs_grad(args):
        return LSTMFunction.apply(backend, lengths, *args)
    y, hn, cn, _ = backend.lstm_fwd(*args, lengths, False)
    return y, hn, cn


def gru_layer(backend: Backend, x, h0, w_ih, w_hh, b_ih, b_hh, lengths):
    """One GRU layer, one direction. x (T, B, I) -> y (T, B, H), hn (B, H)."""
    args = (x, h0, w_ih, w_hh, b_ih, b_hh)
    if _needs_grad(args):
        return GRUFunction.apply(backend, lengths, *args)
    y, hn, _ = backend.gru_fwd(*args, lengths, False)
    return y, hn
