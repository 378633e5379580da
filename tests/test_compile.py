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


MODULES = {
    "rnn-tanh": lambda be: fused_rnn.RNN(3, 4, backend=be),
    "rnn-relu-bi": lambda be: fused_rnn.RNN(
        3, 4, nonlinearity="relu", bidirectional=True, backend=be
    ),
    "lstm-proj": lambda be: fused_rnn.LSTM(3, 4, proj_size=2, backend=be),
    "rnncell": lambda be: fused_rnn.RNNCell(3, 4, backend=be),
    "grucell": lambda be: fused_rnn.GRUCell(3, 4, backend=be),
}


def _outs(out):
    return [out] if isinstance(out, torch.Tensor) else [t for o in out for t in _outs(o)]


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "autocast-bf16"])
@pytest.mark.parametrize("name", list(MODULES))
def test_compile_fullgraph_every_module(name, autocast):
    """No graph break for every module kind on what auto picks here (the compiled ops), also
    under autocast; compiled forward and backward equal eager. (The reference backend's
    trace is covered above.)"""
    backend = "auto"
    torch._dynamo.reset()
    m = MODULES[name](backend)
    shape = (2, 3) if "cell" in name else (4, 2, 3)
    x = torch.randn(*shape, requires_grad=True)
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    res = []
    for f in (m, compiled):
        x.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            outs = _outs(f(x))
        sum(o.float().sum() for o in outs).backward()
        res.append((outs, x.grad.clone()))
    (want, gw), (got, gg) = res
    assert [o.dtype for o in got] == [o.dtype for o in want]
    # bf16 outputs: compiled decompositions may round differently by one bf16 ulp (2^-8)
    tol = dict(atol=1e-2, rtol=1e-2) if autocast else {}
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **tol)
    torch.testing.assert_close(gg, gw, **tol)
