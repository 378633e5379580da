"""torch.compile(fullgraph=True) traces our modules without a graph break."""

from __future__ import annotations

import pytest
import torch

import fused_rnn


@pytest.mark.parametrize("cls", [fused_rnn.LSTM, fused_rnn.GRU], ids=["lstm", "gru"])
def test_compile_fullgraph_reference(cls):
    torch._dynamo.reset()
    m = cls(3, 4, num_layers=1, backend="reference")
    x = torch.randn(4, 2, 3, requires_grad=True)
    want = m(x)[0]
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    got = compiled(x)[0]
    torch.testing.assert_close(got, want)
    got.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
