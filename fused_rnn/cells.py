"""The recurrent cells, as data: the single source of truth every layer keys on.

A cell is its number of gates G (the row blocks of ``weight_ih`` / ``weight_hh``), its number of
recurrent states (LSTM carries (h, c), the others h alone) and its gate math. The math lives
once per backend (``fused_rnn.reference`` for plain PyTorch, the kernels for the others); the
recurrence, lengths, directions, layers, launch and autograd are written once over this record.

Names match ``nn.RNNBase.mode``: LSTM, GRU, RNN_TANH, RNN_RELU.
"""

from __future__ import annotations

import dataclasses

__all__ = [
    "CELLS",
    "GRU_CELL",
    "LSTM_CELL",
    "RNN_RELU_CELL",
    "RNN_TANH_CELL",
    "Cell",
    "cell_for_mode",
]


@dataclasses.dataclass(frozen=True)
class Cell:
    """One recurrent cell.

    name: "lstm" | "gru" | "rnn_tanh" | "rnn_relu" (backend and op names use it)
    mode: nn.RNNBase.mode ("LSTM" | "GRU" | "RNN_TANH" | "RNN_RELU")
    gates: G, the number of H-row blocks of the weights (4: i, f, g, o; 3: r, z, n; 1)
    n_states: 2 for LSTM (h, c), else 1 (h)
    """

    name: str
    mode: str
    gates: int
    n_states: int

    @property
    def is_lstm(self) -> bool:
        return self.n_states == 2

    def __str__(self) -> str:
        return self.name


LSTM_CELL = Cell("lstm", "LSTM", 4, 2)
GRU_CELL = Cell("gru", "GRU", 3, 1)
RNN_TANH_CELL = Cell("rnn_tanh", "RNN_TANH", 1, 1)
RNN_RELU_CELL = Cell("rnn_relu", "RNN_RELU", 1, 1)

CELLS: dict[str, Cell] = {c.name: c for c in (LSTM_CELL, GRU_CELL, RNN_TANH_CELL, RNN_RELU_CELL)}
_BY_MODE = {c.mode: c for c in CELLS.values()}


def cell_for_mode(mode: str) -> Cell:
    """The cell for an ``nn.RNNBase.mode`` string or a cell name ("lstm", "RNN_TANH", ...)."""
    cell = _BY_MODE.get(mode) or CELLS.get(mode)
    if cell is None:
        raise ValueError(f"Unrecognized RNN mode: {mode}")
    return cell
