"""What the Triton recurrence needs to know of each cell, host side: the kernel's ``CELL``
constexpr and the widths of the tensors it reads and writes, the packing of the biases, and
which gate-gradient columns belong to the input and to the hidden side.

Dimension legend: T steps, B batch, H hidden, G gate blocks of W_ih / W_hh, NS activations
saved per step (units of H), NG gate-gradient columns per step (units of H; also the packed
bias's length in units of H).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from . import cell_math


@dataclass(frozen=True)
class CellSpec:
    name: str
    kid: int  # the kernels' CELL constexpr (fused_rnn.triton.cell_math)
    G: int
    NS: int  # LSTM i, f, g, o; GRU r, z, n, W_hn h + b_hn; RNN none (h itself suffices)
    NG: int  # G, plus the GRU's separate d(W_hn h + b_hn) column

    def constexprs(self) -> dict:
        """The kernels' constexprs naming this cell."""
        return dict(CELL=self.kid, G=self.G, NS=self.NS, NG=self.NG)

    @property
    def has_c(self) -> bool:
        return self.kid == cell_math.LSTM.value

    def packed_bias(self, b_ih: Tensor | None, b_hh: Tensor | None, H: int, like: Tensor):
        """(NG*H,) fp32 bias the kernel adds: b_ih + b_hh, except that the GRU keeps b_hn apart
        (it sits inside r * (W_hn h + b_hn)): [b_ir + b_hr, b_iz + b_hz, b_in, b_hn]."""
        n = self.G * H
        b_i, b_h = (
            torch.zeros(n, dtype=torch.float32, device=like.device) if b is None else b.float()
            for b in (b_ih, b_hh)
        )
        if self.NG == self.G:
            return b_i + b_h
        k = (self.G - 1) * H
        return torch.cat([b_i[:k] + b_h[:k], b_i[k:], b_h[k:]])

    def split_grads(self, dg: Tensor) -> tuple[Tensor, Tensor]:
        """dG (T, B, NG*H) -> the gradients of W_ih x + b_ih and of W_hh h + b_hh, each
        (T, B, G*H). They differ only for the GRU, whose n gate has a column of each."""
        if self.NG == self.G:
            return dg, dg
        H = dg.shape[-1] // self.NG
        k = (self.G - 1) * H
        return dg[..., : self.G * H], torch.cat([dg[..., :k], dg[..., self.G * H :]], dim=-1)


SPECS = {
    s.name: s
    for s in (
        CellSpec("lstm", cell_math.LSTM.value, 4, 4, 4),
        CellSpec("gru", cell_math.GRU.value, 3, 4, 4),
        CellSpec("rnn_tanh", cell_math.RNN_TANH.value, 1, 0, 1),
        CellSpec("rnn_relu", cell_math.RNN_RELU.value, 1, 0, 1),
    )
}
BY_KID = {s.kid: s for s in SPECS.values()}
