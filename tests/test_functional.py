"""Functional API, variable lengths, and float64 gradcheck, for every available backend."""

from __future__ import annotations

import pytest
import torch
from conftest import INTERPRETED, backend_params, require_support

import fused_rnn

BACKENDS = backend_params()


def _weights(mode, I, H, layers, bidir, dtype, device, bias=True, gen=None):  # noqa: E741
    G = 4 if mode == "lstm" else 3
    D = 2 if bidir else 1
    out = []
    for layer in range(layers):
        for _ in range(D):
            i = I if layer == 0 else H * D
            w = lambda *s: (torch.rand(*s, generator=gen, dtype=torch.float64) - 0.5).to(  # noqa: E731
                device, dtype
            )
            out.append(
                (
                    w(G * H, i),
                    w(G * H, H),
                    w(G * H) if bias else None,
                    w(G * H) if bias else None,
                    None,
                )
            )
    return out


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_lengths_equal_running_each_sequence_alone(mode, device, backend):
    """Padded batch + lengths == each sequence run on its own, for output and final states,
    bidirectional and two layers (so the reverse direction must start at each own end)."""
    dtype = torch.float64 if backend in ("reference", "cpp") else torch.float32
    require_support(backend, mode, dtype, device)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    g = torch.Generator().manual_seed(0)
    T, B, I, H = 7, 4, 3, 5  # noqa: E741
    lengths = torch.tensor([3, 7, 1, 5])
    x = torch.randn(T, B, I, generator=g, dtype=torch.float64).to(device, dtype)
    x[torch.arange(T).unsqueeze(1) >= lengths.unsqueeze(0)] = float("nan")  # padding is never read
    ws = _weights(mode, I, H, 2, True, dtype, device, gen=g)
    fn = fused_rnn.lstm if mode == "lstm" else fused_rnn.gru
    out, st = fn(x, ws, num_layers=2, bidirectional=True, lengths=lengths, backend=backend)
    st = st if isinstance(st, tuple) else (st,)
    for b in range(B):
        L = int(lengths[b])
        o1, s1 = fn(x[:L, b : b + 1], ws, num_layers=2, bidirectional=True, backend=backend)
        s1 = s1 if isinstance(s1, tuple) else (s1,)
        torch.testing.assert_close(out[:L, b : b + 1], o1, **tol)
        assert torch.all(out[L:, b] == 0), "outputs past a sequence's end must be zero"
        for a, c in zip(st, s1):
            torch.testing.assert_close(a[:, b : b + 1], c, **tol)


def test_lengths_validation():
    ws = _weights("gru", 3, 4, 1, False, torch.float32, "cpu")
    x = torch.randn(5, 2, 3)
    with pytest.raises(ValueError, match=r"in \[1, 5\]"):
        fused_rnn.gru(x, ws, lengths=torch.tensor([6, 2]))
    with pytest.raises(ValueError, match=r"in \[1, 5\]"):
        fused_rnn.gru(x, ws, lengths=torch.tensor([0, 2]))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        fused_rnn.gru(x, ws, lengths=torch.tensor([5, 2, 1]))
    with pytest.raises(TypeError, match="integer"):
        fused_rnn.gru(x, ws, lengths=torch.tensor([5.0, 2.0]))


def test_functional_batch_first_and_default_state():
    ws = _weights("lstm", 3, 4, 2, False, torch.float64, "cpu")
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    a, (h, c) = fused_rnn.lstm(x, ws, num_layers=2, backend="reference")
    b, (h2, c2) = fused_rnn.lstm(
        x.transpose(0, 1), ws, num_layers=2, batch_first=True, backend="reference"
    )
    torch.testing.assert_close(a, b.transpose(0, 1))
    assert h.shape == (2, 2, 4) and c.shape == (2, 2, 4)


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("mode", ["lstm", "gru"])
@pytest.mark.parametrize("proj", [0, 2])
def test_gradcheck_float64(mode, proj, device, backend):
    if mode == "gru" and proj:
        pytest.skip("GRU has no projection")
    require_support(backend, mode, torch.float64, device, bool(proj))
    if backend in INTERPRETED:
        pytest.skip("interpreted backend: gradients are checked by the parity grid")
    cls = fused_rnn.LSTM if mode == "lstm" else fused_rnn.GRU
    kw = dict(proj_size=proj) if proj else {}
    m = cls(2, 3, num_layers=2, bidirectional=True, backend=backend, **kw).double().to(device)
    x = torch.randn(3, 2, 2, dtype=torch.float64, device=device, requires_grad=True)
    P = proj or 3
    h0 = torch.randn(4, 2, P, dtype=torch.float64, device=device, requires_grad=True)
    names = [n for n, _ in m.named_parameters()]
    params = [p.detach().requires_grad_(True) for p in m.parameters()]

    def f(x, h0, *ps):
        hx = h0 if mode == "gru" else (h0, torch.zeros(4, 2, 3, dtype=h0.dtype, device=device))
        out, st = torch.func.functional_call(m, dict(zip(names, ps)), (x, hx))
        return (out, st) if mode == "gru" else (out, *st)

    assert torch.autograd.gradcheck(f, (x, h0, *params), eps=1e-6, atol=1e-6, fast_mode=True)


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_gradcheck_lengths_and_state(device, backend):
    require_support(backend, "lstm", torch.float64, device)
    if backend in INTERPRETED:
        pytest.skip("interpreted backend: gradients are checked by the parity grid")
    ws = _weights("lstm", 3, 4, 1, True, torch.float64, device)
    flat = [w for t in ws for w in t if w is not None]
    for w in flat:
        w.requires_grad_(True)
    x = torch.randn(5, 3, 3, dtype=torch.float64, device=device, requires_grad=True)
    h0 = torch.randn(2, 3, 4, dtype=torch.float64, device=device, requires_grad=True)
    c0 = torch.randn(2, 3, 4, dtype=torch.float64, device=device, requires_grad=True)
    lengths = torch.tensor([5, 2, 4])

    def f(x, h0, c0, *flat):
        it = iter(flat)
        wts = [(next(it), next(it), next(it), next(it), None) for _ in ws]
        y, (h, c) = fused_rnn.lstm(
            x, wts, (h0, c0), bidirectional=True, lengths=lengths, backend=backend
        )
        return y, h, c

    assert torch.autograd.gradcheck(f, (x, h0, c0, *flat), eps=1e-6, atol=1e-6, fast_mode=True)
