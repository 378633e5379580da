"""Each cell's pointwise gate math, forward and backward, as @triton.jit functions; the one
recurrence kernel (:mod:`fused_rnn.triton.recurrence`) picks a cell with its ``CELL``
constexpr through :func:`cell_fwd` / :func:`cell_bwd`, so only the chosen cell is compiled.

Dimension legend: BB batch rows x BH hidden units, the program's tile; every tensor below is
(BB, BH) fp32. ``a0..a3`` are the recurrent GEMM's gate columns (W_hh h_{t-1}), ``x0..x3``
the input projection's (W_ih x_t), ``b0..b3`` the packed fp32 biases
(:func:`fused_rnn.triton.cells.packed_bias`), ``s0..s3`` the activations saved for backward,
``d0..d3`` the gate gradients written to dG. Unused slots carry placeholders.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .common import sigmoid, tanh

# The CELL constexpr of the kernels; fused_rnn.triton.cells.SPECS maps names to these.
LSTM = tl.constexpr(0)
GRU = tl.constexpr(1)
RNN_TANH = tl.constexpr(2)
RNN_RELU = tl.constexpr(3)


# ---------------------------------------------------------------------------------- LSTM
@triton.jit
def lstm_fwd(x0, x1, x2, x3, a0, a1, a2, a3, b0, b1, b2, b3, c_prev):
    """nn.LSTM, gates i, f, g, o -> h, c and the saved activations i, f, g, o."""
    i = sigmoid(x0 + a0 + b0)
    f = sigmoid(x1 + a1 + b1)
    g = tanh(x2 + a2 + b2)
    o = sigmoid(x3 + a3 + b3)
    c = f * c_prev + i * g
    return o * tanh(c), c, i, f, g, o


@triton.jit
def lstm_bwd(dh, dc, i, f, g, o, c, c_prev):
    """dh, dc: gradients of h_t, c_t -> dc_{t-1} and the i, f, g, o pre-activation grads."""
    tc = tanh(c)
    dct = dc + dh * o * (1.0 - tc * tc)
    di = dct * g * i * (1.0 - i)
    df = dct * c_prev * f * (1.0 - f)
    dg = dct * i * (1.0 - g * g)
    do = dh * tc * o * (1.0 - o)
    return dct * f, di, df, dg, do


# ----------------------------------------------------------------------------------- GRU
@triton.jit
def gru_fwd(x0, x1, x2, a0, a1, a2, b0, b1, b2, b3, h_prev):
    """nn.GRU, gates r, z, n with b_hn inside r * (W_hn h + b_hn) -> h and the saved
    r, z, n, W_hn h + b_hn."""
    r = sigmoid(x0 + a0 + b0)
    z = sigmoid(x1 + a1 + b1)
    hn = a2 + b3
    n = tanh(x2 + b2 + r * hn)
    return (1.0 - z) * n + z * h_prev, r, z, n, hn


@triton.jit
def gru_bwd(dh, r, z, n, hn, h_prev):
    """-> the part of dh_{t-1} outside W_hh, and the grads of the r, z, n pre-activations
    and of W_hn h + b_hn."""
    dn = dh * (1.0 - z) * (1.0 - n * n)
    return dh * z, dn * hn * r * (1.0 - r), dh * (h_prev - n) * z * (1.0 - z), dn, dn * r


# ----------------------------------------------------------------------------------- RNN
@triton.jit
def rnn_fwd(x0, a0, b0, RELU: tl.constexpr):
    """nn.RNN: h = act(W_ih x + b_ih + W_hh h + b_hh), act = relu or tanh."""
    pre = x0 + a0 + b0
    if RELU:
        h = tl.maximum(pre, 0.0)
    else:
        h = tanh(pre)
    return h


@triton.jit
def rnn_bwd(dh, h, RELU: tl.constexpr):
    """Gradient of the pre-activation from h itself: relu' = (h > 0), tanh' = 1 - h^2."""
    if RELU:
        d = tl.where(h > 0.0, dh, 0.0)
    else:
        d = dh * (1.0 - h * h)
    return d


# ------------------------------------------------------------------------------ dispatch
@triton.jit
def cell_fwd(
    CELL: tl.constexpr, x0, x1, x2, x3, a0, a1, a2, a3, b0, b1, b2, b3, h_prev, c_prev
):  # fmt: skip
    """One step of cell CELL -> h_t, c_t (c_prev for the cells without c), s0..s3."""
    if CELL == LSTM:
        h, c, s0, s1, s2, s3 = lstm_fwd(x0, x1, x2, x3, a0, a1, a2, a3, b0, b1, b2, b3, c_prev)
    elif CELL == GRU:
        c = c_prev
        h, s0, s1, s2, s3 = gru_fwd(x0, x1, x2, a0, a1, a2, b0, b1, b2, b3, h_prev)
    else:
        c = c_prev
        h = rnn_fwd(x0, a0, b0, CELL == RNN_RELU)
        s0, s1, s2, s3 = h, h, h, h
    return h, c, s0, s1, s2, s3


@triton.jit
def cell_bwd(CELL: tl.constexpr, dh, dc, s0, s1, s2, s3, h_prev, h, c, c_prev):
    """Backward of one step of cell CELL. dh, dc: gradients of h_t, c_t (dc unused without c);
    s0..s3 the saved activations; h_prev, h the states before and after the step (GRU, RNN);
    c, c_prev likewise (LSTM). -> dh_{t-1} outside W_hh, dc_{t-1} (dc without c), d0..d3."""
    if CELL == LSTM:
        dh_prev = tl.zeros_like(dh)
        dc_prev, d0, d1, d2, d3 = lstm_bwd(dh, dc, s0, s1, s2, s3, c, c_prev)
    elif CELL == GRU:
        dc_prev = dc
        dh_prev, d0, d1, d2, d3 = gru_bwd(dh, s0, s1, s2, s3, h_prev)
    else:
        dc_prev = dc
        dh_prev = tl.zeros_like(dh)
        d0 = rnn_bwd(dh, h, CELL == RNN_RELU)
        d1, d2, d3 = d0, d0, d0
    return dh_prev, dc_prev, d0, d1, d2, d3
