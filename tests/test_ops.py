"""The compiled ops (torch.ops.fused_rnn.*) and the "cpp" backend on top of them.

- torch.library.opcheck on every op (schema, fake kernel, AOT dispatch), fp32 and fp64, with and
  without biases, lengths and saved activations;
- every output and gradient of the cpp backend's contract (LSTM with and without projection,
  GRU, RNN tanh / relu) against the reference backend (the RNN: an explicit loop with the ops'
  bf16 semantics), nn.RNN and nn.LSTM(proj_size) themselves, including the padded-step semantics
  (y = 0 there, frozen state, zero gradients, NaN not leaking);
- torch.compile(fullgraph=True) of LSTM (with and without projection), GRU and RNN layers
  through the cpp backend, and of the rnn ops themselves;
- clear errors for bad input at the op boundary, and the backend's supports()/available() reasons.
"""

from __future__ import annotations

import contextlib
import os

import pytest
import torch

import fused_rnn
from fused_rnn.ops import CppBackend, CudaBackend, _stale_sources
from fused_rnn.reference import ReferenceBackend

_WHY = CppBackend().available()
pytestmark = pytest.mark.skipif(_WHY is not None, reason=f"cpp backend unavailable: {_WHY}")

ops = torch.ops.fused_rnn if _WHY is None else None
REF = ReferenceBackend()
CPP = CppBackend()


def _acc(dtype):
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


GATES = {"lstm": 4, "lstm_proj": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}
CELLS = list(GATES)


def _op(cell):
    """The op family of a test cell: lstm, gru or rnn."""
    return cell.split("_")[0]


def _make(cell, T, B, n_in, H, dtype=torch.float64, bias=True, lengths=None):
    """Random arguments of one layer: dict of x (T, B, I), h0 (B, P), [c0 (B, H)], w_ih (G*H, I),
    w_hh (G*H, P), b_ih / b_hh (G*H,) or None, [w_hr (P, H) or None], lengths (B,) int64 or None;
    P = H // 2 + 1 for "lstm_proj", else H."""
    G = GATES[cell]
    P = H // 2 + 1 if cell == "lstm_proj" else H
    # The Elman RNN has no gates to bound its state: at 0.4 a relu RNN of H = 72 grows ~3x per
    # step, so it gets nn.RNN's init scale 1 / sqrt(H).
    w = H**-0.5 if _op(cell) == "rnn" else 0.4
    a = {
        "x": torch.randn(T, B, n_in, dtype=dtype),
        "h0": torch.randn(B, P, dtype=dtype),
        "w_ih": torch.randn(G * H, n_in, dtype=dtype) * w,
        "w_hh": torch.randn(G * H, P, dtype=dtype) * w,
        "b_ih": torch.randn(G * H, dtype=dtype) * 0.3 if bias else None,
        "b_hh": torch.randn(G * H, dtype=dtype) * 0.3 if bias else None,
        "lengths": None if lengths is None else torch.tensor(lengths, dtype=torch.long),
    }
    if _op(cell) == "lstm":
        a["c0"] = torch.randn(B, H, dtype=dtype)
        # nn.LSTM's init scale 1 / sqrt(H): with 0.4 as for the other weights, dh W_hr (a sum of
        # P terms) puts the gradients at ~30 where float32 summation order alone differs by 4e-5
        a["w_hr"] = torch.randn(P, H, dtype=dtype) / H**0.5 if cell == "lstm_proj" else None
    return a


def _fwd_args(cell, a, need_saved):
    x, h0, w_ih, w_hh, b_ih, b_hh, lengths = (
        a[k] for k in ("x", "h0", "w_ih", "w_hh", "b_ih", "b_hh", "lengths")
    )
    if _op(cell) == "lstm":
        return (x, h0, a["c0"], w_ih, w_hh, b_ih, b_hh, a["w_hr"], lengths, need_saved)
    if _op(cell) == "rnn":
        return (x, h0, w_ih, w_hh, b_ih, b_hh, lengths, cell == "rnn_relu", need_saved)
    return (x, h0, w_ih, w_hh, b_ih, b_hh, lengths, need_saved)


def _bwd_args(cell, a, out, grads):
    """Arguments of the cell's bwd op from the forward's inputs `a`, outputs `out` and the
    incoming gradients `grads` (dy, dhn[, dcn])."""
    if _op(cell) == "lstm":
        y, _, _, gates, cs = out
        head = (a["x"], a["h0"], a["c0"], a["w_ih"], a["w_hh"], a["w_hr"], y, gates, cs)
        return (*head, a["lengths"], *grads)
    if _op(cell) == "rnn":
        head = (a["x"], a["h0"], a["w_ih"], a["w_hh"], out[0], a["lengths"], cell == "rnn_relu")
        return (*head, *grads)
    y, _, gates, ghn = out
    head = (a["x"], a["h0"], a["w_ih"], a["w_hh"], y, gates, ghn)
    return (*head, a["lengths"], *grads)


def _grads(cell, T, B, H, dtype):
    """dy (T, B, P), dhn (B, P)[, dcn (B, H)]."""
    P = H // 2 + 1 if cell == "lstm_proj" else H
    shapes = [(T, B, P), (B, P), (B, H)] if _op(cell) == "lstm" else [(T, B, P), (B, P)]
    return tuple(torch.randn(*s, dtype=dtype) for s in shapes)


# ------------------------------------------------------------------------------------ opcheck
OPCHECK_CASES = [
    # (T, B, I, H, bias, lengths)
    (3, 2, 5, 4, True, None),
    (4, 3, 2, 9, False, [4, 1, 2]),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("case", OPCHECK_CASES, ids=lambda c: f"T{c[0]}-B{c[1]}-H{c[3]}-{c[5]}")
@pytest.mark.parametrize("cell", CELLS)
def test_opcheck(cell, case, dtype):
    T, B, n_in, H, bias, lengths = case
    a = _make(cell, T, B, n_in, H, dtype, bias, lengths)
    fwd = getattr(ops, f"{_op(cell)}_fwd")
    bwd = getattr(ops, f"{_op(cell)}_bwd")
    for need_saved in (False, True):
        torch.library.opcheck(fwd, _fwd_args(cell, a, need_saved))
    out = fwd(*_fwd_args(cell, a, True))
    torch.library.opcheck(bwd, _bwd_args(cell, a, out, _grads(cell, T, B, H, dtype)))


# ------------------------------------------------------------------ against the reference
def _contract_run(be, cell, a, grads):
    """Forward and backward through backend `be`'s contract (fused_rnn.backends): y, hn[, cn],
    dx, dh0[, dc0], dw_ih, dw_hh, db_ih, db_hh[, dw_hr]."""
    c = fused_rnn.cells.cell_for_mode("lstm" if cell == "lstm_proj" else cell)
    hx = (a["h0"], a["c0"]) if c.is_lstm else (a["h0"],)
    w_hr = a.get("w_hr")
    args = (a["x"], hx, a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], w_hr, a["lengths"], True)
    y, hn, saved = be.fwd(c, *args)
    dx, dhx, dw_ih, dw_hh, db_ih, db_hh, dw_hr = be.bwd(c, saved, grads[0], tuple(grads[1:]))
    if a["b_ih"] is None:  # no bias: the contract may return None or anything; nothing to compare
        db_ih = db_hh = None
    return (y, *hn, dx, *dhx, dw_ih, dw_hh, db_ih, db_hh, *([dw_hr] if w_hr is not None else []))


def _cpp_run(cell, a, grads):
    """Every output and gradient of the cpp backend's contract for `cell`."""
    return _contract_run(CPP, cell, a, grads)


def _rnn_loop_run(cell, a, grads):
    """The Elman RNN as a plain loop in the accumulation dtype with an explicit backward: the
    oracle for rnn_fwd / rnn_bwd (padded steps: y = 0, state frozen, zero gradients). As the ops,
    backward takes h_t from y in the input dtype (bfloat16 y rounds it: so does nn.RNN, whose
    tanh / relu backward reads its bfloat16 output). Outputs as _contract_run's."""
    dt = a["x"].dtype
    acc = _acc(dt)
    x, h0, w_ih, w_hh = (a[k].to(acc) for k in ("x", "h0", "w_ih", "w_hh"))
    relu = cell == "rnn_relu"
    T, B, _ = x.shape
    t_idx = torch.arange(T).unsqueeze(1)
    mask = torch.ones(T, B, 1, dtype=torch.bool)
    if a["lengths"] is not None:
        mask = (t_idx < a["lengths"].unsqueeze(0)).unsqueeze(-1)
    h, ys = h0, []
    for t in range(T):
        pre = x[t] @ w_ih.t() + h @ w_hh.t()
        if a["b_ih"] is not None:
            pre = pre + a["b_ih"].to(acc) + a["b_hh"].to(acc)
        h_new = pre.relu() if relu else pre.tanh()
        h = torch.where(mask[t], h_new, h)
        ys.append(torch.where(mask[t], h_new, 0.0))
    y = torch.stack(ys).to(dt)
    hs = y.to(acc)  # h_t at valid steps, as backward reads it
    dy, dh = (g.to(acc) for g in grads)
    dg = torch.zeros(T, B, w_ih.shape[0], dtype=acc)
    for t in range(T - 1, -1, -1):
        dht = dh + dy[t]
        deriv = (hs[t] > 0).to(acc) if relu else 1 - hs[t] * hs[t]
        dg[t] = torch.where(mask[t], dht * deriv, 0.0)
        dh = torch.where(mask[t], dg[t] @ w_hh, dh)
    h_prev = torch.cat((h0.unsqueeze(0), hs[:-1]))
    flat = dg.reshape(T * B, -1)
    dw_ih = flat.t() @ x.reshape(T * B, -1)
    dw_hh = flat.t() @ h_prev.reshape(T * B, -1)
    dx = (flat @ w_ih).view(T, B, -1)
    db = flat.sum(0) if a["b_ih"] is not None else None
    out = (y, h, dx, dh, dw_ih, dw_hh, db, db)
    return tuple(None if t is None else t.to(dt) for t in out)


@contextlib.contextmanager
def _num_threads(n):
    """torch's intra-op thread count set to `n` inside the block (CI runs with 1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


REF_CASES = [
    # (T, B, I, H, lengths, threads): odd sizes, H not a multiple of the vector width, one step,
    # B=1
    (1, 1, 3, 5, None, 1),
    (6, 3, 17, 20, None, 1),
    (9, 4, 7, 13, [9, 1, 5, 9], 1),
    (5, 2, 8, 33, [2, 5], 1),
    # big enough for every step to be split over 2 threads: chunk boundaries at 32 / 64 units, a
    # partial last weight panel (H = 72, 130), row tails of the 6-row register tile (B = 13, 7),
    # I = 1, and lengths
    (4, 13, 19, 72, [4, 1, 3, 4, 2, 4, 4, 1, 2, 3, 4, 4, 2], 2),
    (3, 7, 1, 130, None, 2),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize(
    "case", REF_CASES, ids=lambda c: f"T{c[0]}-B{c[1]}-I{c[2]}-H{c[3]}-threads{c[5]}"
)
@pytest.mark.parametrize("cell", CELLS)
def test_matches_reference(cell, case, dtype):
    T, B, n_in, H, lengths, threads = case
    a = _make(cell, T, B, n_in, H, dtype, True, lengths)
    grads = _grads(cell, T, B, H, dtype)
    with _num_threads(threads):
        got = _cpp_run(cell, a, grads)
    if _op(cell) == "rnn":
        want = _rnn_loop_run(cell, a, grads)
    else:
        want = _contract_run(REF, cell, a, grads)
    # Both compute in the same acc dtype; what differs is summation order (and for bf16 the
    # rounding of y, which feeds dW_hh and the RNN's activation derivative, against the
    # reference's float32 state).
    tol = {torch.float64: (1e-12, 1e-10), torch.float32: (2e-5, 2e-5), torch.bfloat16: (3e-2, 3e-2)}
    atol, rtol = tol[dtype]
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert (g is None) == (w is None), f"output {i}"
        if g is not None:
            assert g.dtype == w.dtype, f"output {i}: {g.dtype} vs {w.dtype}"
            torch.testing.assert_close(g, w, atol=atol, rtol=rtol, msg=lambda m, i=i: f"#{i}: {m}")


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_rnn_matches_nn_rnn(nonlinearity):
    """rnn_fwd / rnn_bwd against nn.RNN itself (float32, autograd through torch's kernels)."""
    T, B, n_in, H = 7, 5, 11, 37
    m = torch.nn.RNN(n_in, H, nonlinearity=nonlinearity)
    x = torch.randn(T, B, n_in, requires_grad=True)
    h0 = torch.randn(1, B, H, requires_grad=True)
    y, hn = m(x, h0)
    dy, dhn = torch.randn(T, B, H), torch.randn(B, H)
    params = [m.weight_ih_l0, m.weight_hh_l0, m.bias_ih_l0, m.bias_hh_l0]
    want = torch.autograd.grad((y, hn[0]), [x, h0, *params], (dy, dhn))
    p = [t.detach() for t in params]
    relu = nonlinearity == "relu"
    y2, hn2 = ops.rnn_fwd(x.detach(), h0[0].detach(), *p, None, relu, True)
    got = ops.rnn_bwd(x.detach(), h0[0].detach(), p[0], p[1], y2, None, relu, dy, dhn)
    torch.testing.assert_close(y2, y.detach(), atol=2e-6, rtol=2e-5)
    torch.testing.assert_close(hn2, hn[0].detach(), atol=2e-6, rtol=2e-5)
    for g, w in zip((*got, got[4]), (want[0], want[1][0], *want[2:]), strict=True):
        torch.testing.assert_close(g, w, atol=2e-5, rtol=2e-5)


def test_lstm_proj_matches_nn_lstm():
    """lstm_fwd / lstm_bwd with w_hr against nn.LSTM(proj_size=...) itself (float32)."""
    T, B, n_in, H, P = 6, 5, 9, 21, 7
    m = torch.nn.LSTM(n_in, H, proj_size=P)
    x = torch.randn(T, B, n_in, requires_grad=True)
    h0 = torch.randn(1, B, P, requires_grad=True)
    c0 = torch.randn(1, B, H, requires_grad=True)
    y, (hn, cn) = m(x, (h0, c0))
    dy, dhn, dcn = torch.randn(T, B, P), torch.randn(B, P), torch.randn(B, H)
    w_ih, w_hh, b_ih, b_hh, w_hr = (
        m.weight_ih_l0,
        m.weight_hh_l0,
        m.bias_ih_l0,
        m.bias_hh_l0,
        m.weight_hr_l0,
    )
    want = list(
        torch.autograd.grad((y, hn[0], cn[0]), [x, h0, c0, w_ih, w_hh, b_ih, w_hr], (dy, dhn, dcn))
    )
    want[1], want[2] = want[1][0], want[2][0]
    d = [t.detach() for t in (x, h0[0], c0[0], w_ih, w_hh, b_ih, b_hh, w_hr)]
    out = ops.lstm_fwd(*d, None, True)
    for g, w in zip(out[:3], (y, hn[0], cn[0])):
        torch.testing.assert_close(g, w.detach(), atol=2e-6, rtol=2e-5)
    got = ops.lstm_bwd(*d[:5], d[7], *out[:1], *out[3:], None, dy, dhn, dcn)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("cell", CELLS)
def test_padding_semantics(cell):
    """y is 0 at padded steps, the final state is the one after step len-1, and inputs at padded
    steps (even NaN ones) do not reach anything."""
    T, B, n_in, H = 6, 3, 4, 10
    a = _make(cell, T, B, n_in, H, torch.float64, True, [6, 2, 4])
    a["x"][2:, 1] = float("nan")
    a["x"][4:, 2] = float("nan")
    out = getattr(ops, f"{_op(cell)}_fwd")(*_fwd_args(cell, a, True))
    y, hn = out[0], out[1]
    P = y.shape[2]
    assert torch.equal(y[2:, 1], torch.zeros(T - 2, P, dtype=y.dtype))
    assert torch.equal(y[4:, 2], torch.zeros(T - 4, P, dtype=y.dtype))
    assert torch.isfinite(y).all() and torch.isfinite(hn).all()
    torch.testing.assert_close(hn, torch.stack([y[5, 0], y[1, 1], y[3, 2]]), rtol=0, atol=0)
    dy = torch.randn(T, B, P, dtype=torch.float64)
    dy[2:, 1] = float("nan")  # must be ignored at padded steps
    grads = (dy, *_grads(cell, T, B, H, torch.float64)[1:])
    got = getattr(ops, f"{_op(cell)}_bwd")(*_bwd_args(cell, a, out, grads))
    dx = got[0]
    # (not dW_ih = dG^T x: 0 * NaN there, as in the reference; padding is zeros in practice)
    for i, g in enumerate(got):
        assert i == 3 - (_op(cell) != "lstm") or torch.isfinite(g).all(), i
    assert torch.isfinite(dx[:2, 1]).all()
    assert torch.equal(dx[2:, 1], torch.zeros(T - 2, n_in, dtype=dx.dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("cell", CELLS)
def test_nan_and_inf_propagate(cell, dtype):
    """No fast-math: a NaN in x makes that row's outputs NaN (as in torch), and saturating inputs
    (+inf pre-activations) saturate the gates instead of giving NaN."""
    T, B, n_in, H = 3, 2, 4, 9
    a = _make(cell, T, B, n_in, H, dtype)
    a["x"][1, 0, 2] = float("nan")
    y, hn = getattr(ops, f"{_op(cell)}_fwd")(*_fwd_args(cell, a, False))[:2]
    assert torch.isnan(y[1:, 0]).all() and torch.isnan(hn[0]).all()
    assert torch.isfinite(y[:, 1]).all() and torch.isfinite(y[0]).all()
    a = _make(cell, T, B, n_in, H, dtype)
    a["x"][0, 1] = float("inf")
    a["w_ih"].abs_()  # every input pre-activation of row 1 at step 0 is +inf
    y = getattr(ops, f"{_op(cell)}_fwd")(*_fwd_args(cell, a, False))[0]
    assert not torch.isnan(y[0, 1]).any()


def _lstm_c1(x, gate, saturated):
    """c_1 of a one-step LSTM with I = H = 1 and c0 = 0 whose gate block `gate` has the
    pre-activation x and whose block `saturated` has bias 100, every other block 0: with the input
    gate (0) and g (2) as the pair, c_1 = i * g is exactly the other one's activation."""
    n = x.numel()
    w_ih = torch.zeros(4, 1)
    w_ih[gate] = 1.0
    b_ih = torch.zeros(4)
    b_ih[saturated] = 100.0
    zeros = torch.zeros(n, 1)
    out = ops.lstm_fwd(
        x.view(1, n, 1),
        zeros,
        zeros,
        w_ih,
        torch.zeros(4, 1),
        b_ih,
        torch.zeros(4),
        None,
        None,
        False,
    )
    return out[2].view(-1)


def _float32_tanh_via_lstm(x):
    """tanh as the cpp kernels compute it in float32 (csrc/cpu/cpu_common.h: vtanh), observed
    through the public op: g's pre-activation is x and the input gate sigmoid(100) = 1 exactly."""
    return _lstm_c1(x, gate=2, saturated=0)


def _float32_sigmoid_via_lstm(x):
    """sigmoid as the cpp kernels compute it in float32 (cpu_common.h: vsigmoid): the input gate's
    pre-activation is x and g = tanh(100) = 1 exactly."""
    return _lstm_c1(x, gate=0, saturated=2)


def test_float32_tanh_accuracy():
    """The kernels' own float32 tanh (csrc/cpu/cpu_common.h: u / (u + 2) with u = e^{2|x|} - 1 on
    AVX2; Taylor series below |x| = 0.4 and exp-based above elsewhere) stays within 2.5 ulp of
    the float64 tanh over a dense grid; NaN stays NaN, large |x| gives +-1."""
    above = [torch.tensor(0.4)]
    for _ in range(64):  # the float32 neighbours of the switch point
        above.append(torch.nextafter(above[-1], torch.tensor(1.0)))
    below = [torch.nextafter(above[0], torch.tensor(0.0))]
    for _ in range(64):
        below.append(torch.nextafter(below[-1], torch.tensor(0.0)))
    mag = torch.logspace(-37, 0.5, 100_000)
    x = torch.cat(
        [
            torch.linspace(-12, 12, 1_000_001),
            torch.linspace(-0.5, 0.5, 500_001),
            mag,
            -mag,
            torch.stack(above),
            torch.stack(below),
            -torch.stack(above),
        ]
    )
    ref = torch.tanh(x.double())
    spacing = torch.nextafter(ref.float().abs(), torch.tensor(float("inf"))).double()
    spacing -= ref.float().abs().double()
    ulps = (_float32_tanh_via_lstm(x).double() - ref).abs() / spacing
    assert ulps.max().item() <= 2.5, (ulps.max().item(), x[ulps.argmax()].item())
    # (inf cannot reach it this way: inf * 0 in the other gates' GEMM columns is NaN; saturation at
    # +inf pre-activations is test_nan_and_inf_propagate's job.)
    special = torch.tensor([float("nan"), 1e30, -1e30, 30.0, -20.0, 1e-40, -1e-40])
    got = _float32_tanh_via_lstm(special)
    assert torch.isnan(got[0])
    assert got[1:5].tolist() == [1.0, -1.0, 1.0, -1.0]
    assert got[5:].tolist() == special[5:].tolist()  # tanh(x) = x below ~1e-4


def test_float32_sigmoid_accuracy():
    """The kernels' own float32 sigmoid stays within 3 ulp of the float64 sigmoid wherever the
    result is a normal float (measured worst 2.48 ulp, near x = -16.6 where 1 + e^{-x} rounds,
    as in torch.sigmoid); it saturates to exactly 1 and 0 as torch's does, and NaN stays NaN."""
    mag = torch.logspace(-37, 1.94, 100_000)
    x = torch.cat(
        [
            torch.linspace(-87.3, 87, 1_000_001),
            torch.linspace(-17, -16, 200_001),  # where 1 + e^{-x} passes 2^24
            torch.linspace(-1, 1, 200_001),
            mag,
            -mag,
        ]
    )
    ref = torch.sigmoid(x.double())
    normal = ref > torch.finfo(torch.float32).tiny
    spacing = (
        torch.nextafter(ref.float(), torch.tensor(float("inf"))).double() - ref.float().double()
    )
    ulps = (_float32_sigmoid_via_lstm(x).double() - ref).abs() / spacing
    ulps = ulps[normal]
    assert ulps.max().item() <= 3.0, (ulps.max().item(), x[normal][ulps.argmax()].item())
    special = torch.tensor([float("nan"), 1e30, -1e30, 90.0, -90.0, 0.0, -0.0])
    got = _float32_sigmoid_via_lstm(special)
    assert torch.isnan(got[0])
    assert got[1:].tolist() == [1.0, 0.0, 1.0, 0.0, 0.5, 0.5]


# ----------------------------------------------------------------------------- torch.compile
@pytest.mark.parametrize(
    "cls,kw",
    [
        (fused_rnn.LSTM, {}),
        (fused_rnn.LSTM, {"proj_size": 2}),
        (fused_rnn.GRU, {}),
        (fused_rnn.RNN, {}),
        (fused_rnn.RNN, {"nonlinearity": "relu"}),
    ],
    ids=["lstm", "lstm_proj", "gru", "rnn_tanh", "rnn_relu"],
)
def test_compile_fullgraph_cpp(cls, kw):
    torch._dynamo.reset()
    m = cls(3, 5, backend="cpp", **kw)
    x = torch.randn(4, 2, 3, requires_grad=True)
    y_eager = m(x)[0]
    (gx_eager,) = torch.autograd.grad(y_eager.sum(), x)
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    y = compiled(x)[0]
    (gx,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(y, y_eager)
    torch.testing.assert_close(gx, gx_eager)


@pytest.mark.parametrize("relu", [False, True])
def test_compile_fullgraph_rnn_ops(relu):
    """rnn_fwd / rnn_bwd trace through their fake kernels without a graph break."""
    torch._dynamo.reset()
    a = _make("rnn_relu" if relu else "rnn_tanh", 4, 2, 3, 5, torch.float32)
    args = _fwd_args("rnn_relu" if relu else "rnn_tanh", a, True)
    dy, dhn = torch.randn(4, 2, 5), torch.randn(2, 5)

    def both(x, h0, w_ih, w_hh, b_ih, b_hh):
        y, hn = ops.rnn_fwd(x, h0, w_ih, w_hh, b_ih, b_hh, None, relu, True)
        return (y, hn, *ops.rnn_bwd(x, h0, w_ih, w_hh, y, None, relu, dy, dhn))

    want = both(*args[:6])
    got = torch.compile(both, fullgraph=True, backend="aot_eager")(*args[:6])
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)


# ------------------------------------------------------------------------------ bad input
BAD_INPUT = [
    # (description, change to the LSTM arguments, expected message fragment)
    ("h0 shape", lambda a: a.update(h0=torch.randn(2, 5)), r"h0 must have shape \(2, 4\)"),
    ("dtype mix", lambda a: a.update(w_hh=a["w_hh"].double()), "w_hh must have dtype Float"),
    ("2-d x", lambda a: a.update(x=a["x"][0]), r"x must be \(T, B, I\)"),
    ("int x", lambda a: a.update(x=a["x"].long()), "x must be float16, bfloat16, float32"),
    ("strided x", lambda a: a.update(x=a["x"].transpose(0, 1)), "x must be contiguous"),
    ("one bias", lambda a: a.update(b_hh=None), "must both be given or both be None"),
    ("lengths > T", lambda a: a.update(lengths=torch.tensor([3, 4])), r"lengths\[1\] = 4"),
    ("lengths 0", lambda a: a.update(lengths=torch.tensor([0, 1])), r"outside \[1, T\]"),
    ("lengths int32", lambda a: a.update(lengths=torch.tensor([1, 1]).int()), "dtype Long"),
    ("w_ih rows", lambda a: a.update(w_ih=torch.randn(12, 3)), r"w_ih must have shape \(16, 3\)"),
    # a projection (P, H) = (3, 4): w_hh and h0 must then have P = 3 columns
    ("w_hr vs w_hh", lambda a: a.update(w_hr=torch.randn(3, 4)), r"w_hh must have shape \(16, 3\)"),
    ("w_hr cols", lambda a: a.update(w_hr=torch.randn(4, 5)), r"w_hh must have shape \(20, 4\)"),
    ("w_hr 1-d", lambda a: a.update(w_hr=torch.randn(4)), r"w_hr must be \(P, H\)"),
]


@pytest.mark.parametrize(
    "change,fragment", [c[1:] for c in BAD_INPUT], ids=[c[0] for c in BAD_INPUT]
)
def test_bad_input_message(change, fragment):
    a = _make("lstm", 3, 2, 3, 4, torch.float32)
    change(a)
    with pytest.raises(RuntimeError, match=fragment):
        ops.lstm_fwd(*_fwd_args("lstm", a, True))


def test_bwd_without_saved_activations_is_an_error():
    a = _make("gru", 3, 2, 3, 4, torch.float32)
    out = ops.gru_fwd(*_fwd_args("gru", a, False))  # gates / ghn are empty
    with pytest.raises(RuntimeError, match=r"gates must have shape \(3, 2, 12\)"):
        ops.gru_bwd(*_bwd_args("gru", a, out, _grads("gru", 3, 2, 4, torch.float32)))


# ------------------------------------------------------------------------- backend answers
def test_backend_reasons():
    assert CPP.available() is None
    x = torch.randn(2, 1, 3)
    for cell in fused_rnn.cells.CELLS.values():
        assert CPP.supports(cell, x, False) is None
    assert CPP.supports(fused_rnn.cells.LSTM_CELL, x, True) is None
    assert "proj_size" in CPP.supports(fused_rnn.cells.RNN_TANH_CELL, x, True)
    assert "float16, bfloat16" in CPP.supports("gru", x.to(torch.complex64), False)
    assert "runs on cuda" in CudaBackend().supports("gru", x, False)
    if not torch.cuda.is_available():
        assert CudaBackend().available() is not None


@pytest.mark.skipif(
    not os.path.isdir(os.path.join(os.path.dirname(os.path.dirname(fused_rnn.__file__)), "csrc")),
    reason="fused_rnn is an installed package here: no sources beside it to be older than",
)
def test_stale_library_detected(tmp_path):
    """A library older than the sources it was built from is reported (editable installs)."""
    lib = tmp_path / "_C.so"
    lib.write_bytes(b"")
    os.utime(lib, (0, 0))
    stale = _stale_sources(str(lib))
    assert "csrc/ops.cpp" in stale and "csrc/cpu/recurrence.h" in stale


# (T, B, lengths): H = 72 is big enough for two chunks per step (units 0-31, 32-71), the last
# panel half full; I = 19 leaves a k tail in every register tile.
GEMM_SHAPES = {
    # two 6-row tiles and a 1-row tail per step
    "B13": (5, 13, [5, 2, 4, 5, 1, 3, 5, 5, 4, 2, 5, 1, 3]),
    # batch 1: the input projection runs 48 steps at once (a second, 2-step block), the
    # recurrent GEMM is the 1-row tile with k split over 4 FMA chains
    "B1": (50, 1, [50]),
    # batch 2: 24-step projection blocks, the 2-row tile
    "B2": (50, 2, [50, 31]),
    # batch 5: 10-step blocks, the last one 3 steps long
    "B5": (23, 5, [23, 7, 12, 23, 1]),
}


@pytest.mark.parametrize("shape", list(GEMM_SHAPES))
@pytest.mark.parametrize("cell", ["lstm", "lstm_proj", "gru", "rnn_tanh"])
def test_blas_gemm_fallback_matches(tmp_path, cell, shape):
    """float32 runs its GEMMs on the packed-panel AVX2 kernel (csrc/cpu/panel_gemm.h); the BLAS
    fallback (FUSED_RNN_CPU_PANEL_GEMM=0, also what float64 and non-AVX2 builds use) must give
    the same results, with the work split over 2 threads in both. The switch is read once per
    process, hence the subprocess."""
    import subprocess
    import sys

    T, B, lengths = GEMM_SHAPES[shape]
    a = _make(cell, T, B, 19, 72, torch.float32, True, lengths)
    grads = _grads(cell, T, B, 72, torch.float32)
    torch.save((a, grads), tmp_path / "case.pt")
    script = (
        "import sys, torch, fused_rnn\n"
        "from fused_rnn.ops import CppBackend\n"
        "sys.path.insert(0, sys.argv[2])\n"
        "from test_ops import _cpp_run\n"
        "a, g = torch.load(sys.argv[1] + '/case.pt')\n"
        "torch.set_num_threads(2)\n"
        f"torch.save(_cpp_run('{cell}', a, g), sys.argv[1] + '/out.pt')\n"
    )
    env = {**os.environ, "FUSED_RNN_CPU_PANEL_GEMM": "0"}
    here = os.path.dirname(os.path.abspath(__file__))
    subprocess.run(
        [sys.executable, "-c", script, str(tmp_path), here], env=env, check=True, timeout=300
    )
    unpacked = torch.load(tmp_path / "out.pt")
    with _num_threads(2):
        packed = _cpp_run(cell, a, grads)
    # Both are float32 with a different summation order, so neither is "the" answer: each is held
    # against the float64 result (which runs the BLAS path) and the panel kernel's error may be at
    # most twice the BLAS path's, plus a few float32 ulps of the result's scale.
    a64 = {k: (v.double() if v is not None and v.is_floating_point() else v) for k, v in a.items()}
    ref = _cpp_run(cell, a64, tuple(g.double() for g in grads))
    eps = torch.finfo(torch.float32).eps
    for i, (p, u, r) in enumerate(zip(packed, unpacked, ref)):
        if r is None:
            continue
        err_panel = (p.double() - r).abs().max().item()
        err_blas = (u.double() - r).abs().max().item()
        scale = r.abs().max().item()
        assert err_panel <= 2 * err_blas + 4 * eps * scale, (i, err_panel, err_blas, scale)
