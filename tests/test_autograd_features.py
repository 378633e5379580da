"""Drop-in under every autograd feature ordinary training code uses, held to torch.nn's modules:
autocast (AMP), double backward (gradgradcheck), batched gradients (is_grads_batched), the
torch.func transforms, empty batches and zero-width cells, and torch's error messages."""

from __future__ import annotations

import pytest
import torch
from conftest import backend_params, require_support
from torch import nn
from torch.func import functional_call, grad, jacfwd, jacrev, jvp, vjp, vmap

import fused_rnn
from fused_rnn import functional as fr_functional

# (torch class, ours, constructor kwargs, cell name for require_support)
SEQ = [
    (nn.LSTM, fused_rnn.LSTM, {}, "lstm"),
    (nn.LSTM, fused_rnn.LSTM, {"proj_size": 2}, "lstm"),
    (nn.GRU, fused_rnn.GRU, {}, "gru"),
    (nn.RNN, fused_rnn.RNN, {}, "rnn_tanh"),
    (nn.RNN, fused_rnn.RNN, {"nonlinearity": "relu"}, "rnn_relu"),
]
SEQ_IDS = ["lstm", "lstm-proj", "gru", "rnn-tanh", "rnn-relu"]
CELLS = [
    (nn.LSTMCell, fused_rnn.LSTMCell, {}, "lstm"),
    (nn.GRUCell, fused_rnn.GRUCell, {}, "gru"),
    (nn.RNNCell, fused_rnn.RNNCell, {}, "rnn_tanh"),
    (nn.RNNCell, fused_rnn.RNNCell, {"nonlinearity": "relu"}, "rnn_relu"),
]
CELL_IDS = ["lstm", "gru", "rnn-tanh", "rnn-relu"]


def _pair(theirs_cls, ours_cls, *args, backend="auto", dtype=torch.float32, **kw):
    theirs = theirs_cls(*args, **kw).to(dtype)
    ours = ours_cls(*args, backend=backend, **kw).to(dtype)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def _flat(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for o in out for t in _flat(o)]


def _skip_unsupported(backend, cell, dtype, proj=False):
    require_support(backend, cell, dtype, "cpu", proj)


# ------------------------------------------------------------------------------- autocast
def _torch_under_autocast(theirs, x, hx):
    """torch's module under CPU autocast; oneDNN's fused LSTM cannot build a bf16 primitive on
    CPUs without native bf16 (AVX2-only): there autocast's own cast of x and the states (all
    arguments of that op) is done by hand."""
    try:
        return theirs(x, hx)
    except RuntimeError as e:
        if "primitive descriptor" not in str(e):
            raise
        hx = None if hx is None else tuple(h.bfloat16() for h in hx)
        return theirs(x.bfloat16(), hx)


@pytest.mark.parametrize("given_hx", [False, True], ids=["no-hx", "hx"])
@pytest.mark.parametrize("theirs_cls,ours_cls,kw,cell", SEQ + CELLS, ids=SEQ_IDS + CELL_IDS)
def test_autocast_cpu_bf16_like_torch(theirs_cls, ours_cls, kw, cell, given_hx, monkeypatch):
    is_cell = theirs_cls in (nn.LSTMCell, nn.GRUCell, nn.RNNCell)
    theirs, ours = _pair(theirs_cls, ours_cls, 5, 6, **kw)
    lin = nn.Linear(5, 5)
    x = torch.randn(3, 5) if is_cell else torch.randn(4, 3, 5)
    hx = None
    if given_hx:
        P = kw.get("proj_size", 0) or 6
        if is_cell:
            hx = torch.randn(3, 6)
            hx = (hx, torch.randn(3, 6)) if cell == "lstm" else hx
        else:
            hx = torch.randn(1, 3, P)
            hx = (hx, torch.randn(1, 3, 6)) if cell == "lstm" else hx
    used = []
    real = fr_functional.resolve_backend

    def spy(*a, **k):
        be = real(*a, **k)
        used.append(be.name)
        return be

    monkeypatch.setattr(fr_functional, "resolve_backend", spy)
    for source in ("linear", "fp32"):
        for m in (theirs, ours):
            m.zero_grad()
        got = {}
        for name, m in (("theirs", theirs), ("ours", ours)):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                inp = lin(x) if source == "linear" else x
                out = _torch_under_autocast(m, inp, hx) if name == "theirs" else m(inp, hx)
                loss = sum(t.float().sum() for t in _flat(out))
            loss.backward()
            got[name] = (_flat(out), [p.grad for p in m.parameters()])
        (o_t, g_t), (o_o, g_o) = got["theirs"], got["ours"]
        assert [t.dtype for t in o_o] == [t.dtype for t in o_t], source
        for a, b in zip(o_o, o_t):
            torch.testing.assert_close(a.float(), b.float(), atol=3e-2, rtol=3e-2)
        for p, a, b in zip(ours.parameters(), g_o, g_t):
            assert p.dtype == torch.float32 and a.dtype == torch.float32
            torch.testing.assert_close(a, b, atol=6e-2, rtol=6e-2)
    # a fused backend ran (not a silent fall to the reference): what auto picks for this case
    # in bf16 without autocast (cpp, or torch's own op where the CPU policy measured it faster)
    assert used and "reference" not in used, used


def test_autocast_functional_and_double_stays_double():
    m = fused_rnn.LSTM(3, 4).double()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, (h, c) = m(torch.randn(2, 1, 3, dtype=torch.double))
    assert y.dtype == h.dtype == c.dtype == torch.float64
    w = [(torch.randn(12, 3), torch.randn(12, 4), None, None, None)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, hn = fused_rnn.gru(torch.randn(5, 2, 3), w)
    assert out.dtype == hn.dtype == torch.float32  # nn.GRU on the CPU: fp32 (promotion)


# -------------------------------------------------------------------------- second order
@pytest.mark.parametrize("device,backend", backend_params())
@pytest.mark.parametrize("theirs_cls,ours_cls,kw,cell", SEQ, ids=SEQ_IDS)
def test_double_backward_matches_torch(theirs_cls, ours_cls, kw, cell, device, backend):
    _skip_unsupported(backend, cell, torch.float64, "proj_size" in kw)
    theirs, ours = _pair(
        theirs_cls, ours_cls, 4, 5, backend=backend, dtype=torch.float64, bidirectional=True, **kw
    )
    x = torch.rand(3, 2, 4, dtype=torch.double, requires_grad=True)

    def hvp(m):
        (g,) = torch.autograd.grad(m(x)[0].sum(), x, create_graph=True)
        return torch.autograd.grad(g.pow(2).sum(), [x, *m.parameters()])

    want, got = hvp(theirs), hvp(ours)
    if cell != "rnn_relu":  # relu is piecewise linear: its second derivative in x is 0
        assert want[0].abs().max() > 0  # the case has a second derivative to get right
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("device,backend", backend_params())
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
def test_gradgradcheck_float64_with_lengths(cell, device, backend):
    _skip_unsupported(backend, cell, torch.float64)
    G = {"lstm": 4, "gru": 3}.get(cell, 1)
    torch.manual_seed(1)
    x = torch.randn(3, 2, 2, dtype=torch.double, requires_grad=True)
    w_ih = torch.randn(G * 3, 2, dtype=torch.double, requires_grad=True)
    w_hh = torch.randn(G * 3, 3, dtype=torch.double, requires_grad=True)
    b = torch.randn(G * 3, dtype=torch.double, requires_grad=True)
    h0 = torch.randn(1, 2, 3, dtype=torch.double, requires_grad=True)
    lengths = torch.tensor([3, 2])

    def f(x, w_ih, w_hh, b, h0):
        w = [(w_ih, w_hh, b, b, None)]
        if cell == "lstm":
            y, (h, c) = fused_rnn.lstm(x, w, (h0, h0 * 0.5), lengths=lengths, backend=backend)
            return y, h, c
        if cell == "gru":
            return fused_rnn.gru(x, w, h0, lengths=lengths, backend=backend)
        return fused_rnn.rnn(x, w, h0, nonlinearity=cell[4:], lengths=lengths, backend=backend)

    assert torch.autograd.gradgradcheck(f, (x, w_ih, w_hh, b, h0))


def test_double_backward_issue_example():
    m = fused_rnn.LSTM(4, 4).double()
    t = nn.LSTM(4, 4).double()
    t.load_state_dict(m.state_dict())
    x = torch.rand(1, 3, 4, dtype=torch.double, requires_grad=True)
    res = []
    for mod in (m, t):
        (g,) = torch.autograd.grad(mod(x)[0].sum(), x, create_graph=True)
        res.append(torch.autograd.grad(g.pow(2).sum(), x)[0])
    assert res[1].abs().max() > 0
    torch.testing.assert_close(res[0], res[1], atol=1e-12, rtol=1e-10)


# ---------------------------------------------------------------------- batched gradients
@pytest.mark.parametrize("device,backend", backend_params())
@pytest.mark.parametrize("theirs_cls,ours_cls,kw,cell", SEQ, ids=SEQ_IDS)
def test_is_grads_batched(theirs_cls, ours_cls, kw, cell, device, backend):
    _skip_unsupported(backend, cell, torch.float64, "proj_size" in kw)
    _, ours = _pair(theirs_cls, ours_cls, 2, 3, backend=backend, dtype=torch.float64, **kw)
    x = torch.randn(4, 1, 2, dtype=torch.double, requires_grad=True)
    o, _ = ours(x)
    v = torch.randn(5, *o.shape, dtype=torch.double)
    (batched,) = torch.autograd.grad(o, x, v, is_grads_batched=True)
    loop = torch.stack([torch.autograd.grad(ours(x)[0], x, vi)[0] for vi in v])
    torch.testing.assert_close(batched, loop, atol=1e-12, rtol=1e-10)


# --------------------------------------------------------------------------- torch.func
@pytest.mark.parametrize("theirs_cls,ours_cls,kw,cell", SEQ, ids=SEQ_IDS)
def test_torch_func_transforms_like_torch(theirs_cls, ours_cls, kw, cell):
    theirs, ours = _pair(theirs_cls, ours_cls, 3, 4, dtype=torch.float64, **kw)
    x = torch.randn(5, 2, 3, dtype=torch.double)
    params = {k: v.detach() for k, v in ours.named_parameters()}

    def loss(m):
        return lambda p, x: functional_call(m, p, (x,))[0].pow(2).sum()

    for a, b in zip(grad(loss(ours))(params, x).values(), grad(loss(theirs))(params, x).values()):
        torch.testing.assert_close(a, b)
    out_o, f_o = vjp(lambda x: ours(x)[0], x)
    out_t, f_t = vjp(lambda x: theirs(x)[0], x)
    torch.testing.assert_close(out_o, out_t)
    torch.testing.assert_close(f_o(torch.ones_like(out_o))[0], f_t(torch.ones_like(out_t))[0])
    torch.testing.assert_close(jacrev(lambda x: ours(x)[0])(x), jacrev(lambda x: theirs(x)[0])(x))
    torch.testing.assert_close(
        jacfwd(lambda x: ours(x)[0])(x[:2]), jacfwd(lambda x: theirs(x)[0])(x[:2])
    )
    tangent = torch.randn_like(x)
    torch.testing.assert_close(
        jvp(lambda x: ours(x)[0], (x,), (tangent,))[1],
        jvp(lambda x: theirs(x)[0], (x,), (tangent,))[1],
    )
    # torch refuses vmap over its RNN modules; ours batches, equal to a loop
    xs = torch.randn(3, 5, 2, 3, dtype=torch.double)
    torch.testing.assert_close(
        vmap(lambda x: ours(x)[0])(xs), torch.stack([ours(v)[0] for v in xs])
    )


def test_forward_mode_ad_dual_tensors():
    import torch.autograd.forward_ad as fwAD

    theirs, ours = _pair(nn.GRU, fused_rnn.GRU, 3, 4, dtype=torch.float64)
    x, t = torch.randn(4, 2, 3, dtype=torch.double), torch.randn(4, 2, 3, dtype=torch.double)
    res = []
    for m in (ours, theirs):
        with fwAD.dual_level():
            res.append(fwAD.unpack_dual(m(fwAD.make_dual(x, t))[0]).tangent)
    torch.testing.assert_close(res[0], res[1])


# ------------------------------------------------------------------------ degenerate sizes
@pytest.mark.parametrize("device,backend", backend_params())
@pytest.mark.parametrize("theirs_cls,ours_cls,kw,cell", SEQ, ids=SEQ_IDS)
def test_empty_batch_is_part_of_the_graph(theirs_cls, ours_cls, kw, cell, device, backend):
    theirs, ours = _pair(theirs_cls, ours_cls, 3, 4, backend=backend, num_layers=2, **kw)
    x = torch.zeros(5, 0, 3)
    want, got = _flat(theirs(x)), _flat(ours(x))
    assert [t.shape for t in got] == [t.shape for t in want]
    assert all(t.requires_grad for t in got)
    sum(t.sum() for t in got).backward()
    for p in ours.parameters():
        assert p.grad is not None and not p.grad.any()


@pytest.mark.parametrize("theirs_cls,ours_cls,kw,cell", CELLS, ids=CELL_IDS)
@pytest.mark.parametrize("I,H,B", [(10, 0, 3), (0, 4, 3), (5, 4, 0)], ids=["H0", "I0", "B0"])
def test_zero_sizes_in_cells_like_torch(theirs_cls, ours_cls, kw, cell, I, H, B):  # noqa: E741
    theirs, ours = _pair(theirs_cls, ours_cls, I, H, **kw)
    x = torch.randn(B, I, requires_grad=True)
    hx = torch.randn(B, H)
    hx = (hx, torch.randn(B, H)) if cell == "lstm" else hx
    want, got = _flat(theirs(x, hx)), _flat(ours(x, hx))
    assert [t.shape for t in got] == [t.shape for t in want]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    sum(t.sum() for t in got).backward()
    gx = x.grad.clone()
    x.grad = None
    sum(t.sum() for t in want).backward()
    torch.testing.assert_close(gx, x.grad)


# ----------------------------------------------------------------------------- errors
def _same_error(f_theirs, f_ours):
    with pytest.raises(Exception) as want:
        f_theirs()
    with pytest.raises(Exception) as got:
        f_ours()
    assert type(got.value) is type(want.value)
    assert str(got.value) == str(want.value)


BAD_CELL_CALLS = {  # (input size n, hidden size h) -> (input, hx)
    "input-3d": lambda n, h: (torch.randn(2, 3, n), None),
    "input-0d": lambda n, h: (torch.tensor(1.0), None),
    "hx-4d": lambda n, h: (torch.randn(2, n), torch.randn(1, 2, h, 1)),
    "hx-3d": lambda n, h: (torch.randn(2, n), torch.randn(1, 2, h)),
    "input-size": lambda n, h: (torch.randn(2, n + 1), None),
    "hidden-size": lambda n, h: (torch.randn(2, n), torch.randn(2, h + 1)),
    "batch": lambda n, h: (torch.randn(2, n), torch.randn(3, h)),
    "unbatched-2d-hx": lambda n, h: (torch.randn(n), torch.randn(2, h)),
    "dtype": lambda n, h: (torch.randn(2, n, dtype=torch.double), None),
    "hx-dtype": lambda n, h: (torch.randn(2, n), torch.randn(2, h, dtype=torch.double)),
}


@pytest.mark.parametrize("bad", list(BAD_CELL_CALLS))
@pytest.mark.parametrize("theirs_cls,ours_cls,kw,cell", CELLS, ids=CELL_IDS)
def test_cell_errors_match_torch(theirs_cls, ours_cls, kw, cell, bad):
    theirs, ours = _pair(theirs_cls, ours_cls, 3, 4, **kw)
    x, hx = BAD_CELL_CALLS[bad](3, 4)
    if cell == "lstm" and hx is not None:
        hx = (hx, hx.clone())
    _same_error(lambda: theirs(x, hx), lambda: ours(x, hx))


BAD_SEQ_CALLS = {
    "input-4d": lambda: (torch.randn(2, 3, 4, 3), None),
    "input-1d": lambda: (torch.randn(3), None),
    "input-size": lambda: (torch.randn(2, 3, 5), None),
    "hx-2d-for-batched": lambda: (torch.randn(2, 3, 3), torch.randn(3, 4)),
    "hx-3d-for-unbatched": lambda: (torch.randn(2, 3), torch.randn(1, 1, 4)),
    "hx-size": lambda: (torch.randn(2, 3, 3), torch.randn(1, 3, 5)),
    "hx-batch": lambda: (torch.randn(2, 3, 3), torch.randn(1, 2, 4)),
    "dtype": lambda: (torch.randn(2, 3, 3, dtype=torch.double), None),
}


@pytest.mark.parametrize("bad", list(BAD_SEQ_CALLS))
@pytest.mark.parametrize(
    "theirs_cls,ours_cls,kw,cell", [SEQ[0], SEQ[2], SEQ[3]], ids=["lstm", "gru", "rnn"]
)
def test_sequence_errors_match_torch(theirs_cls, ours_cls, kw, cell, bad):
    theirs, ours = _pair(theirs_cls, ours_cls, 3, 4, **kw)
    x, hx = BAD_SEQ_CALLS[bad]()
    if cell == "lstm" and hx is not None:
        hx = (hx, hx.clone())
    _same_error(lambda: theirs(x, hx), lambda: ours(x, hx))


def test_constructor_errors_match_torch():
    for args, kw in [
        ((3, 4), {"nonlinearity": "gelu"}),
        ((3, 4, 1, "sigmoid"), {}),
        ((3, 4), {"proj_size": 2}),
        ((0, 4), {}),
        ((3, 0), {}),
    ]:
        _same_error(
            lambda a=args, k=kw: nn.RNN(*a, **k), lambda a=args, k=kw: fused_rnn.RNN(*a, **k)
        )


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("theirs_cls,ours_cls,kw,cell", SEQ + CELLS, ids=SEQ_IDS + CELL_IDS)
def test_autocast_cuda_gradscaler_and_compile(theirs_cls, ours_cls, kw, cell, dtype):
    """CUDA autocast: outputs and states in the autocast dtype as torch's modules (cuDNN and the
    *_cell ops are on the lower-precision list), fp32 parameter grads through GradScaler, and
    the same under torch.compile(fullgraph=True)."""
    is_cell = theirs_cls in (nn.LSTMCell, nn.GRUCell, nn.RNNCell)
    theirs, ours = _pair(theirs_cls, ours_cls, 16, 32, **kw)
    theirs, ours = theirs.cuda(), ours.cuda()
    x = torch.randn(8, 16, device="cuda") if is_cell else torch.randn(10, 8, 16, device="cuda")
    compiled = torch.compile(ours, fullgraph=True)
    results = []
    for m in (theirs, ours, compiled):
        m.zero_grad()
        scaler = torch.amp.GradScaler("cuda")
        with torch.autocast("cuda", dtype=dtype):
            outs = _flat(m(x))
            loss = sum(t.float().pow(2).sum() for t in outs)
        scaler.scale(loss).backward()
        results.append((outs, [p.grad / scaler.get_scale() for p in m.parameters()]))
    (o_t, g_t) = results[0]
    for o_o, g_o in results[1:]:
        assert [t.dtype for t in o_o] == [t.dtype for t in o_t]
        for a, b in zip(o_o, o_t):
            torch.testing.assert_close(a.float(), b.float(), atol=3e-2, rtol=3e-2)
        for a, b in zip(g_o, g_t):
            assert a.dtype == torch.float32
            torch.testing.assert_close(a, b, atol=5e-2, rtol=5e-2)
