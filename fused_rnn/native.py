"""The "native" backend: torch's own fused RNN op (``torch._VF.lstm`` / ``gru`` / ``rnn_tanh`` /
``rnn_relu``, what nn.LSTM / nn.GRU / nn.RNN call) for the whole multi-layer stack.

It exists so that ``backend="auto"`` is never slower than torch.nn: where no fused_rnn kernel
wins a case (a shape, a dtype, a CPU ISA -- see fused_rnn.cpu_policy), auto runs torch's op,
which on the CPU is oneDNN's RNN primitive (bf16 at the CPU's bf16 speed where it has
AVX512-BF16 / AMX) or ATen's composite cell. Gradients, double backward and torch.func come from
torch's autograd of that op, exactly as for nn.LSTM.

Dimension legend: T steps, B batch, L layers, D directions, H hidden, P LSTM output size.

Besides the whole-stack entry ``run_stack`` (called by fused_rnn.functional.rnn_forward when the
resolved backend has it), the per-layer backend contract is answered by the reference maths,
so a caller that drives single layers (a cell module) still gets correct results.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .reference import ReferenceBackend

__all__ = ["NativeBackend"]

# cell name -> torch's op; each takes (input, hx, params, has_biases, num_layers, dropout, train,
# bidirectional, batch_first), or (data, batch_sizes, hx, params, ...) without batch_first.
_OPS = {
    "lstm": "lstm",
    "gru": "gru",
    "rnn_tanh": "rnn_tanh",
    "rnn_relu": "rnn_relu",
}


def _cell_name(cell) -> str:
    # A fused_rnn.cells.Cell, or its name (the form callers used before cells.py existed).
    return getattr(cell, "name", cell)


class NativeBackend(ReferenceBackend):
    """torch's fused RNN op for the whole stack; the reference maths for single layers."""

    name = "native"

    def available(self) -> str | None:
        return None

    def supports(self, cell, x: Tensor, has_proj: bool) -> str | None:
        name = _cell_name(cell)
        if name not in _OPS:
            return f"no torch op for cell {name!r}"
        if has_proj and name != "lstm":
            return "proj_size is an LSTM option"
        return None

    def run_stack(
        self,
        cell,
        x: Tensor,
        hx: tuple[Tensor, ...],
        weights,
        num_layers: int,
        dropout: float,
        training: bool,
        bidirectional: bool,
        batch_first: bool,
        lengths: Tensor | None,
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        """The whole stack through torch's op.

        Args:
            x: (T, B, I), or (B, T, I) with ``batch_first``.
            hx: LSTM ``(h0 (L*D, B, P), c0 (L*D, B, H))``, else ``(h0 (L*D, B, H),)``.
            weights: L*D tuples ``(w_ih, w_hh, b_ih, b_hh, w_hr)`` in nn.LSTM's order, None for
                absent biases / projection.
            lengths: None (every sequence has T steps) or (B,) integer lengths; then the batch
                is packed (any order), run with torch's packed op and unpacked with zero
                padding, as nn.LSTM does for a PackedSequence.

        Returns:
            output (T, B, D*P) (batch-first if asked) and the final states shaped like ``hx``.
        """
        name = _cell_name(cell)
        op = getattr(torch._VF, _OPS[name])
        has_biases = weights[0][2] is not None
        params = []
        for w_ih, w_hh, b_ih, b_hh, w_hr in weights:
            params += [w_ih, w_hh]
            if has_biases:
                params += [b_ih, b_hh]
            if w_hr is not None:
                params.append(w_hr)
        states = hx if name == "lstm" else hx[0]
        args = (params, has_biases, num_layers, float(dropout), training, bidirectional)
        if lengths is None:
            res = op(x, states, *args, batch_first)
            return res[0], tuple(res[1:])
        T = x.shape[1] if batch_first else x.shape[0]
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first, enforce_sorted=False)
        order, unorder = packed.sorted_indices, packed.unsorted_indices
        if name == "lstm":
            states = tuple(s.index_select(1, order) for s in hx)
        else:
            states = states.index_select(1, order)
        res = op(packed.data, packed.batch_sizes, states, *args)
        out = packed._replace(data=res[0])
        y, _ = pad_packed_sequence(out, batch_first, total_length=T)
        return y, tuple(s.index_select(1, unorder) for s in res[1:])
