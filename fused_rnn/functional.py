"""Functional LSTM / GRU / RNN: layers, directions, dropout and lengths stacked over the backend
contract (fused_rnn.backends), one layer-direction at a time through fused_rnn.autograd.

Dimension legend: T steps, B batch, I input, H hidden, P LSTM output (proj_size or H),
L layers, D directions (1 or 2).

Public entry points ``lstm``, ``gru`` and ``rnn`` take a padded batch plus optional per-sequence
lengths; the modules (fused_rnn.modules) turn a PackedSequence into that form.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from .amp import autocast_dtype, cast_inputs, output_dtypes
from .autograd import run_layer
from .backends import as_cell, get_backend, resolve_backend
from .cells import Cell

__all__ = ["gru", "lstm", "rnn", "rnn_forward"]


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


def _transforms_active(x: Tensor, hx, weights) -> bool:
    """True under a torch.func transform (grad, vjp, jacrev, jvp, vmap) or with forward-mode
    dual tensors among x, hx and the weights: the fused kernels have no rules for those, the
    reference's plain ops do."""
    if torch.compiler.is_compiling():
        return False
    if torch._C._functorch.peek_interpreter_stack() is not None:
        return True
    if fwAD._current_level >= 0:
        tensors = (x, *hx, *(t for w in weights for t in w))
        return any(t is not None and fwAD.unpack_dual(t).tangent is not None for t in tensors)
    return False


def rnn_forward(
    mode: str | Cell,
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
    is_cell: bool = False,
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Run a multi-layer, possibly bidirectional recurrent stack of one cell over a padded batch.

    Args:
        mode: the cell: a :class:`fused_rnn.cells.Cell`, its name ("lstm", "gru", "rnn_tanh",
            "rnn_relu") or nn.RNNBase's mode string ("LSTM", "RNN_TANH", ...).
        input: (T, B, I), or (B, T, I) with ``batch_first``.
        hx: the initial states, each (L*D, B, *): LSTM ``(h0 (L*D, B, P), c0 (L*D, B, H))``,
            the others ``(h0 (L*D, B, H),)``.
        weights: L*D entries in nn.LSTM's order (layer-major, forward before reverse), each
            ``(w_ih, w_hh, b_ih, b_hh, w_hr)`` with None for absent biases / projection.
        lengths: optional (B,) integer lengths, 1 <= lengths[b] <= T. Outputs past a sequence's
            end are zero and its final state is the one at its last valid step.
        packed_dropout: draw the between-layer dropout masks over the packed data, as torch
            does for PackedSequence input, so a seeded run matches nn.LSTM's masks exactly
            (needs CPU ``lengths`` sorted in decreasing order, as a PackedSequence has).
        is_cell: the call is one step of an nn.*Cell (only autocast's output dtypes differ).

    Returns:
        output (T, B, D*P) (batch-first if asked) and the final states shaped like ``hx``.

    Under ``torch.autocast`` the outputs have the dtypes torch's module gives (fused_rnn.amp).
    Under torch.func transforms, forward-mode AD, and for empty sizes (B, H or I = 0) the layers
    run the reference's plain PyTorch ops, which every transform understands.
    """
    cell = as_cell(mode)
    x = input.transpose(0, 1) if batch_first else input
    if x.shape[0] == 0:
        raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
    w0 = weights[0]
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
    has_proj = cell.is_lstm and w0[4] is not None
    rest = (num_layers, dropout, training, bidirectional, batch_first, lengths, backend)
    rest = rest + (packed_dropout, has_proj)
    amp = autocast_dtype(x)
    if amp is None:
        return _run_stack(cell, x, tuple(hx), weights, *rest)
    want = output_dtypes(
        cell, x.device.type, amp, x.dtype, [h.dtype for h in hx], has_proj, is_cell
    )
    x, hx, weights = cast_inputs(x, hx, weights, amp)
    with torch.autocast(x.device.type, enabled=False):
        out, states = _run_stack(cell, x, hx, weights, *rest)
    return out.to(want[0]), tuple(s.to(d) for s, d in zip(states, want[1:]))


def _run_stack(
    cell: Cell,
    x: Tensor,
    hx: tuple[Tensor, ...],
    weights,
    num_layers: int,
    dropout: float,
    training: bool,
    bidirectional: bool,
    batch_first: bool,
    lengths: Tensor | None,
    backend: str,
    packed_dropout: bool,
    has_proj: bool,
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """rnn_forward past validation and autocast; x is time-major (T, B, I)."""
    T, B = x.shape[0], x.shape[1]
    D = 2 if bidirectional else 1
    lens = _normalise_lengths(lengths, T, B, x.device)
    if (
        B == 0
        or x.shape[2] == 0
        or weights[0][1].shape[0] == 0
        or _transforms_active(x, hx, weights)
    ):
        be = get_backend("reference")
    else:
        be = resolve_backend(backend, cell, x, has_proj, packed=lens is not None)
    if hasattr(be, "run_stack"):  # a backend that runs the whole stack itself (native)
        out, states = be.run_stack(
            cell, x, hx, weights, num_layers, dropout, training, bidirectional, False, lens
        )
        return (out.transpose(0, 1) if batch_first else out), states
    rev = _reverse_index(lens, T, B, x.device) if bidirectional else None

    finals: list[tuple[Tensor, ...]] = []
    layer_in = x.contiguous()
    for layer in range(num_layers):
        ys = []
        for d in range(D):
            k = layer * D + d
            xin = layer_in if d == 0 else _time_reverse(layer_in, rev).contiguous()
            y, hn = run_layer(be, cell, xin, tuple(h.select(0, k) for h in hx), *weights[k], lens)
            finals.append(hn)
            ys.append(y if d == 0 else _time_reverse(y, rev))
        layer_in = ys[0] if D == 1 else torch.cat(ys, 2)
        if dropout > 0 and training and layer < num_layers - 1:
            if packed_dropout and lens is not None:
                layer_in = _dropout_packed(layer_in, lengths, dropout)
            else:
                layer_in = F.dropout(layer_in, p=dropout, training=True)
    out = layer_in.transpose(0, 1) if batch_first else layer_in
    if len(finals) == 1:  # one layer, one direction: a view, not a copy
        states = tuple(f.unsqueeze(0) for f in finals[0])
    else:
        states = tuple(torch.stack([f[i] for f in finals], 0) for i in range(cell.n_states))
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
    return _one_state_stack(
        "gru", input, weights, hx, num_layers, bidirectional, dropout, training, batch_first,
        lengths, backend,
    )  # fmt: skip


def _one_state_stack(
    cell: str, input, weights, hx, num_layers, bidirectional, dropout, training, batch_first,
    lengths, backend,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """gru() / rnn(): a cell whose only state is h, with weights given as 4-tuples."""
    D = 2 if bidirectional else 1
    weights = [tuple(w[:4]) + (None,) for w in weights]
    if hx is None:
        hx = _default_state(input, batch_first, num_layers * D, weights[0][1].shape[1])
    out, (hn,) = rnn_forward(
        cell, input, (hx,), weights, num_layers, dropout, training, bidirectional, batch_first,
        lengths, backend,
    )  # fmt: skip
    return out, hn


def rnn(
    input: Tensor,
    weights: Sequence[Sequence[Tensor | None]],
    hx: Tensor | None = None,
    *,
    nonlinearity: str = "tanh",
    num_layers: int = 1,
    bidirectional: bool = False,
    dropout: float = 0.0,
    training: bool = False,
    batch_first: bool = False,
    lengths: Tensor | None = None,
    backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """Functional multi-layer Elman RNN, h' = act(W_ih x + b_ih + W_hh h + b_hh), over a padded
    batch.

    Args:
        input: (T, B, I), or (B, T, I) with ``batch_first``.
        weights: L*D tuples ``(w_ih (H, I_l), w_hh (H, H), b_ih (H,) | None, b_hh (H,) | None)``
            (a fifth entry, if present, must be None), ordered like nn.RNN's parameters.
        hx: optional h0 (L*D, B, H); zeros when omitted.
        nonlinearity: "tanh" or "relu".
        lengths: optional (B,) lengths; see :func:`rnn_forward`.

    Returns:
        ``output (T, B, D*H)`` and ``h_n (L*D, B, H)``.
    """
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
    return _one_state_stack(
        f"rnn_{nonlinearity}", input, weights, hx, num_layers, bidirectional, dropout, training,
        batch_first, lengths, backend,
    )  # fmt: skip
