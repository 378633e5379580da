"""Functional LSTM / GRU: layers, directions, dropout and lengths stacked over the backend
contract (fused_rnn.backends), one layer-direction at a time through fused_rnn.autograd.

Dimension legend: T steps, B batch, I input, H hidden, P LSTM output (proj_size or H),
L layers, D directions (1 or 2).

Public entry points ``lstm`` and ``gru`` take a padded batch plus optional per-sequence
lengths; the modules (fused_rnn.modules) turn a PackedSequence into that form.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from .autograd import gru_layer, lstm_layer
from .backends import resolve_backend

__all__ = ["gru", "lstm", "rnn_forward"]


def _reverse_index(lengths: Tensor | None, T: int, B: int, device) -> Tensor | None:
    """(T, B) int64 index that reverses each sequence within its own length (and leaves the
    padding in place), so the backward direction starts at each sequence's own last step.
    It is its own inverse. None means a plain flip of the time axis."""
    if lengths is None:
        return None
    t = torch.arange(T, device=device).unsqueeze(1)
    lens = lengths.unsqueeze(0)
    return torch.where(t < lens, lens - 1 - t, t)


def _time_reverse(x: Tensor, index: Tensor | None) -> Tensor:
    if index is None:
        return x.flip(0)
    return x.gather(0, index.unsqueeze(-1).expand_as(x))


def _dropout_packed(x: Tensor, lengths: Tensor, p: float) -> Tensor:
    """Dropout of a padded (T, B, F) batch with the mask drawn over its packed data, the order
    in which torch draws it for PackedSequence input (padding stays zero)."""
    packed = pack_padded_sequence(x, lengths)
    data = F.dropout(packed.data, p=p, training=True)
    return pad_packed_sequence(PackedSequence(data, packed.batch_sizes), total_length=x.shape[0])[0]


def _check_lengths(lengths: Tensor, T: int, B: int) -> None:
    if lengths.dim() != 1 or lengths.numel() != B:
        raise ValueError(f"lengths must have shape ({B},), got {tuple(lengths.shape)}")
    if lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
        raise TypeError(f"lengths must be an integer tensor, got {lengths.dtype}")
    if lengths.device.type == "cpu" and B > 0:
        lo, hi = int(lengths.min()), int(lengths.max())
        if lo < 1 or hi > T:
            raise ValueError(
                f"every length must be in [1, {T}] (the padded length), got min {lo} max {hi}"
            )


def _normalise_lengths(lengths: Tensor | None, T: int, B: int, device) -> Tensor | None:
    """int64 lengths on the data's device, or None when every sequence fills all T steps
    (known without a device sync only when lengths live on the CPU, as PackedSequence's do)."""
    if lengths is None:
        return None
    _check_lengths(lengths, T, B)
    if lengths.device.type == "cpu" and B > 0 and bool((lengths == T).all()):
        return None
    return lengths.to(device=device, dtype=torch.long, non_blocking=True)


def rnn_forward(
    mode: str,
    input: Tensor,
    hx: Sequence[Tensor],
    weights: Sequence[Sequence[Tensor | None]],
    num_layers: int,
    dropout: float,
    training: bool,
    bidirectional: bool,
    batch_first: bool,
    lengths: Tensor | None = None,
    backend: str = "auto",
    packed_dropout: bool = False,
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Run a multi-layer, possibly bidirectional LSTM or GRU over a padded batch.

    Args:
        mode: "lstm" or "gru".
        input: (T, B, I), or (B, T, I) with ``batch_first``.
        hx: LSTM ``(h0 (L*D, B, P), c0 (L*D, B, H))``; GRU ``(h0 (L*D, B, H),)``.
        weights: L*D entries in nn.LSTM's order (layer-major, forward before reverse), each
            ``(w_ih, w_hh, b_ih, b_hh, w_hr)`` with None for absent biases / projection.
        lengths: optional (B,) integer lengths, 1 <= lengths[b] <= T. Outputs past a sequence's
            end are zero and its final state is the one at its last valid step.
        packed_dropout: draw the between-layer dropout masks over the packed data, as torch
            does for PackedSequence input, so a seeded run matches nn.LSTM's masks exactly
            (needs CPU ``lengths`` sorted in decreasing order, as a PackedSequence has).

    Returns:
        output (T, B, D*P) (batch-first if asked) and the final states shaped like ``hx``.
    """
    is_lstm = mode == "lstm"
    x = input.transpose(0, 1) if batch_first else input
    T, B = x.shape[0], x.shape[1]
    if T == 0:
        raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
    D = 2 if bidirectional else 1
    w0 = weights[0]
    has_proj = is_lstm and w0[4] is not None
    if B == 0:  # nothing to run; shapes as torch returns them
        P = w0[4].shape[0] if has_proj else w0[1].shape[1]
        out = x.new_empty((T, 0, D * P))
        return (out.transpose(0, 1) if batch_first else out), tuple(h.clone() for h in hx)
    if x.device != w0[0].device:
        raise RuntimeError(
            "Input and parameter tensors are not at the same device, found input tensor at "
            f"{x.device} and parameter tensor at {w0[0].device}"
        )
    for h in hx:
        if h.device != x.device:
            raise RuntimeError(
                "Input and hidden tensors are not at the same device, found input tensor at "
                f"{x.device} and hidden tensor at {h.device}"
            )
    lens = _normalise_lengths(lengths, T, B, x.device)
    be = resolve_backend(backend, mode, x, has_proj, packed=lens is not None)
    if hasattr(be, "run_stack"):  # a backend that runs the whole stack itself (native)
        args = (num_layers, dropout, training, bidirectional, batch_first, lens)
        return be.run_stack(mode, input, tuple(hx), weights, *args)
    rev = _reverse_index(lens, T, B, x.device) if bidirectional else None

    h_out: list[Tensor] = []
    c_out: list[Tensor] = []
    layer_in = x.contiguous()
    for layer in range(num_layers):
        ys = []
        for d in range(D):
            k = layer * D + d
            w_ih, w_hh, b_ih, b_hh, w_hr = weights[k]
            xin = layer_in if d == 0 else _time_reverse(layer_in, rev).contiguous()
            if is_lstm:
                y, hn, cn = lstm_layer(
                    be, xin, hx[0][k], hx[1][k], w_ih, w_hh, b_ih, b_hh, w_hr, lens
                )
                c_out.append(cn)
            else:
                y, hn = gru_layer(be, xin, hx[0][k], w_ih, w_hh, b_ih, b_hh, lens)
            h_out.append(hn)
            ys.append(y if d == 0 else _time_reverse(y, rev))
        layer_in = ys[0] if D == 1 else torch.cat(ys, 2)
        if dropout > 0 and training and layer < num_layers - 1:
            if packed_dropout and lens is not None:
                layer_in = _dropout_packed(layer_in, lengths, dropout)
            else:
                layer_in = F.dropout(layer_in, p=dropout, training=True)
    out = layer_in.transpose(0, 1) if batch_first else layer_in
    states = (torch.stack(h_out, 0),)
    if is_lstm:
        states = states + (torch.stack(c_out, 0),)
    return out, states


def _default_state(x: Tensor, batch_first: bool, n: int, size: int) -> Tensor:
    B = x.shape[0] if batch_first else x.shape[1]
    return x.new_zeros((n, B, size))


def lstm(
    input: Tensor,
    weights: Sequence[Sequence[Tensor | None]],
    hx: tuple[Tensor, Tensor] | None = None,
    *,
    num_layers: int = 1,
    bidirectional: bool = False,
    dropout: float = 0.0,
    training: bool = False,
    batch_first: bool = False,
    lengths: Tensor | None = None,
    backend: str = "auto",
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """Functional multi-layer LSTM over a padded batch.

    Args:
        input: (T, B, I), or (B, T, I) with ``batch_first``.
        weights: L*D tuples ``(w_ih (4H, I_l), w_hh (4H, P), b_ih (4H,) | None,
            b_hh (4H,) | None, w_hr (P, H) | None)``, ordered like nn.LSTM's parameters.
        hx: optional ``(h0 (L*D, B, P), c0 (L*D, B, H))``; zeros when omitted.
        lengths: optional (B,) lengths; see :func:`rnn_forward`.

    Returns:
        ``output (T, B, D*P)`` and ``(h_n (L*D, B, P), c_n (L*D, B, H))``.
    """
    D = 2 if bidirectional else 1
    if hx is None:
        w = weights[0]
        P = w[4].shape[0] if w[4] is not None else w[1].shape[1]
        H = w[1].shape[0] // 4
        hx = (
            _default_state(input, batch_first, num_layers * D, P),
            _default_state(input, batch_first, num_layers * D, H),
        )
    return rnn_forward(
        "lstm",
        input,
        hx,
        weights,
        num_layers,
        dropout,
        training,
        bidirectional,
        batch_first,
        lengths,
        backend,
    )


def gru(
    input: Tensor,
    weights: Sequence[Sequence[Tensor | None]],
    hx: Tensor | None = None,
    *,
    num_layers: int = 1,
    bidirectional: bool = False,
    dropout: float = 0.0,
    training: bool = False,
    batch_first: bool = False,
    lengths: Tensor | None = None,
    backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """Functional multi-layer GRU over a padded batch.

    Args:
        input: (T, B, I), or (B, T, I) with ``batch_first``.
        weights: L*D tuples ``(w_ih (3H, I_l), w_hh (3H, H), b_ih (3H,) | None,
            b_hh (3H,) | None)`` (a fifth entry, if present, must be None).
        hx: optional h0 (L*D, B, H); zeros when omitted.

    Returns:
        ``output (T, B, D*H)`` and ``h_n (L*D, B, H)``.
    """
    D = 2 if bidirectional else 1
    weights = [tuple(w[:4]) + (None,) for w in weights]
    if hx is None:
        hx = _default_state(input, batch_first, num_layers * D, weights[0][1].shape[1])
    out, (hn,) = rnn_forward(
        "gru",
        input,
        (hx,),
        weights,
        num_layers,
        dropout,
        training,
        bidirectional,
        batch_first,
        lengths,
        backend,
    )
    return out, hn
