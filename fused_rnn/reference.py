"""Pure-PyTorch reference: the test oracle, the last-resort fallback, and the differentiable
path behind double backward and torch.func.

One scan (:func:`ref_forward`) over a ~10-line step per cell, written only with out-of-place
torch ops, so that autograd differentiates it to any order, ``vmap`` batches it, and forward-mode
AD pushes tangents through it. Nothing here writes into a tensor in place.

Dimension legend: T steps, B batch, I input, H hidden, G gates, P LSTM output (proj_size or H).
Arithmetic runs in the "acc" dtype: float32 for float16 / bfloat16 inputs, else the input's dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .cells import Cell

__all__ = ["ReferenceBackend", "ref_forward"]


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _up(t: Tensor | None, dt: torch.dtype) -> Tensor | None:
    return None if t is None else t.to(dt)


def _linear(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    """x (N, K) @ w (M, K)^T (+ b (M,)) -> (N, M)."""
    return x @ w.t() if b is None else torch.addmm(b, x, w.t())


# ----------------------------------------------------------------------- the cells' gate math
# tensor_split rather than chunk: it gives G blocks even when H = 0.
# step(xp, gh, states, w_hr) -> (y_t, new_states): xp = W_ih x_t + b_ih (B, G*H) and
# gh = W_hh h_{t-1} + b_hh (B, G*H) are the two pre-activations, states the tuple carried over.
def _lstm_step(xp, gh, states, w_hr):
    _, c = states
    i, f, g, o = (xp + gh).tensor_split(4, 1)
    c = f.sigmoid() * c + i.sigmoid() * g.tanh()
    h = o.sigmoid() * c.tanh()
    if w_hr is not None:
        h = h @ w_hr.t()
    return h, (h, c)


def _gru_step(xp, gh, states, w_hr):
    (h,) = states
    xr, xz, xn = xp.tensor_split(3, 1)
    hr, hz, hn = gh.tensor_split(3, 1)
    r = (xr + hr).sigmoid()
    z = (xz + hz).sigmoid()
    n = (xn + r * hn).tanh()
    h = n + z * (h - n)
    return h, (h,)


def _rnn_tanh_step(xp, gh, states, w_hr):
    h = (xp + gh).tanh()
    return h, (h,)


def _rnn_relu_step(xp, gh, states, w_hr):
    h = (xp + gh).relu()
    return h, (h,)


STEPS = {
    "lstm": _lstm_step,
    "gru": _gru_step,
    "rnn_tanh": _rnn_tanh_step,
    "rnn_relu": _rnn_relu_step,
}


def ref_forward(
    cell: Cell,
    x: Tensor,
    hx: tuple[Tensor, ...],
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
    w_hr: Tensor | None,
    lengths: Tensor | None,
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """One layer, one direction, differentiable by autograd (any order) and by torch.func.

    x (T, B, I); hx a tuple of cell.n_states states (LSTM (h0 (B, P), c0 (B, H)), else
    (h0 (B, H),)); w_ih (G*H, I), w_hh (G*H, P), b_ih / b_hh (G*H,) or None, w_hr (P, H) or
    None; lengths None or int (B,) with 1 <= lengths[b] <= T.
    Returns y (T, B, P) in x's dtype, zero where t >= lengths[b], and the final states in the
    dtypes of hx, each taken at the sequence's own last step.
    """
    step = STEPS[cell.name]
    acc = acc_dtype(x.dtype)
    T, B = x.shape[0], x.shape[1]
    w_hh_a, w_hr_a, b_hh_a = _up(w_hh, acc), _up(w_hr, acc), _up(b_hh, acc)
    # The input projection of every step as one GEMM, hoisted out of the loop.
    xp = _linear(x.to(acc).reshape(T * B, x.shape[2]), w_ih.to(acc), _up(b_ih, acc))
    xp = xp.view(T, B, w_ih.shape[0])
    states = tuple(s.to(acc) for s in hx)
    masks = None
    if lengths is not None:
        t = torch.arange(T, device=x.device).unsqueeze(1)
        masks = (t < lengths.to(x.device).unsqueeze(0)).unsqueeze(-1)  # (T, B, 1)
    ys = []
    # unbind rather than xp[t]: indexing makes autograd allocate a full-size zero gradient per
    # step in backward.
    for t, xp_t in enumerate(xp.unbind(0)):
        y, new = step(xp_t, _linear(states[0], w_hh_a, b_hh_a), states, w_hr_a)
        if masks is not None:
            m = masks[t]
            new = tuple(torch.where(m, n, s) for n, s in zip(new, states))
            y = torch.where(m, y, y.new_zeros(()))
        states = new
        ys.append(y)
    y = torch.stack(ys, 0) if ys else xp.new_zeros((0, B, hx[0].shape[-1]))
    return y.to(x.dtype), tuple(s.to(h.dtype) for s, h in zip(states, hx))


class ReferenceBackend:
    """The backend contract (fused_rnn.backends) in plain PyTorch: any device, any dtype torch
    supports, every cell, projections. Its backward differentiates :func:`ref_forward` with
    autograd (recomputing the forward), which is the oracle the kernels' hand-written backward
    passes are held to."""

    name = "reference"

    def available(self) -> str | None:
        return None

    def supports(self, cell, x: Tensor, has_proj: bool) -> str | None:
        return None

    def fwd(self, cell, x, hx, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, need_saved):
        with torch.no_grad():
            y, hn = ref_forward(cell, x, hx, w_ih, w_hh, b_ih, b_hh, w_hr, lengths)
        saved = (x, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, *hx) if need_saved else ()
        return y, hn, saved

    def bwd(self, cell, saved, dy, dhn):
        x, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, *hx = saved
        inputs = [
            None if t is None else t.detach().requires_grad_()
            for t in (x, w_ih, w_hh, b_ih, b_hh, w_hr, *hx)
        ]
        x_, w_ih_, w_hh_, b_ih_, b_hh_, w_hr_, *hx_ = inputs
        with torch.enable_grad():
            y, hn = ref_forward(cell, x_, tuple(hx_), w_ih_, w_hh_, b_ih_, b_hh_, w_hr_, lengths)
            live = [t for t in inputs if t is not None]
            grads = iter(torch.autograd.grad((y, *hn), live, (dy, *dhn), allow_unused=True))
        out = [None if t is None else _zeros_if_none(next(grads), t) for t in inputs]
        dx, dw_ih, dw_hh, db_ih, db_hh, dw_hr, *dhx = out
        return dx, tuple(dhx), dw_ih, dw_hh, db_ih, db_hh, dw_hr


def _zeros_if_none(g: Tensor | None, like: Tensor) -> Tensor:
    return torch.zeros_like(like) if g is None else g
