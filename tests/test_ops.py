"""The compiled ops (torch.ops.fused_rnn.*) and the "cpp" backend on top of them.

- torch.library.opcheck on every op (schema, fake kernel, AOT dispatch), fp32 and fp64, with and
  without biases, lengths and saved activations;
- the op outputs and gradients against the reference backend at the op boundary, including the
  padded-step semantics (y = 0 there, frozen state, zero gradients, NaN not leaking);
- torch.compile(fullgraph=True) of an LSTM and a GRU layer through the cpp backend;
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


def _make(cell, T, B, n_in, H, dtype=torch.float64, bias=True, lengths=None):
    """Random arguments of one layer: dict of x (T, B, I), h0 (B, H), [c0 (B, H)], w_ih (G*H, I),
    w_hh (G*H, H), b_ih / b_hh (G*H,) or None, lengths (B,) int64 or None."""
    G = 4 if cell == "lstm" else 3
    a = {
        "x": torch.randn(T, B, n_in, dtype=dtype),
        "h0": torch.randn(B, H, dtype=dtype),
        "w_ih": torch.randn(G * H, n_in, dtype=dtype) * 0.4,
        "w_hh": torch.randn(G * H, H, dtype=dtype) * 0.4,
        "b_ih": torch.randn(G * H, dtype=dtype) * 0.3 if bias else None,
        "b_hh": torch.randn(G * H, dtype=dtype) * 0.3 if bias else None,
        "lengths": None if lengths is None else torch.tensor(lengths, dtype=torch.long),
    }
    if cell == "lstm":
        a["c0"] = torch.randn(B, H, dtype=dtype)
    return a


def _fwd_args(cell, a, need_saved):
    head = (a["x"], a["h0"], a["c0"]) if cell == "lstm" else (a["x"], a["h0"])
    return (*head, a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], a["lengths"], need_saved)


def _bwd_args(cell, a, out, grads):
    """Arguments of lstm_bwd / gru_bwd from the forward's inputs `a`, outputs `out` and the
    incoming gradients `grads` (dy, dhn[, dcn])."""
    if cell == "lstm":
        y, _, _, gates, cs = out
        head = (a["x"], a["h0"], a["c0"], a["w_ih"], a["w_hh"], y, gates, cs)
    else:
        y, _, gates, ghn = out
        head = (a["x"], a["h0"], a["w_ih"], a["w_hh"], y, gates, ghn)
    return (*head, a["lengths"], *grads)


def _grads(cell, T, B, H, dtype):
    n = 3 if cell == "lstm" else 2
    return tuple(torch.randn(*s, dtype=dtype) for s in [(T, B, H), (B, H), (B, H)][:n])


# ------------------------------------------------------------------------------------ opcheck
OPCHECK_CASES = [
    # (T, B, I, H, bias, lengths)
    (3, 2, 5, 4, True, None),
    (4, 3, 2, 9, False, [4, 1, 2]),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("case", OPCHECK_CASES, ids=lambda c: f"T{c[0]}-B{c[1]}-H{c[3]}-{c[5]}")
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_opcheck(cell, case, dtype):
    T, B, n_in, H, bias, lengths = case
    a = _make(cell, T, B, n_in, H, dtype, bias, lengths)
    fwd = getattr(ops, f"{cell}_fwd")
    bwd = getattr(ops, f"{cell}_bwd")
    for need_saved in (False, True):
        torch.library.opcheck(fwd, _fwd_args(cell, a, need_saved))
    out = fwd(*_fwd_args(cell, a, True))
    torch.library.opcheck(bwd, _bwd_args(cell, a, out, _grads(cell, T, B, H, dtype)))


# ------------------------------------------------------------------ against the reference
def _contract_run(be, cell, a, grads):
    """Forward and backward through backend `be`'s contract; returns every output and grad."""
    x, h0, w_ih, w_hh, b_ih, b_hh, lengths = (
        a[k] for k in ("x", "h0", "w_ih", "w_hh", "b_ih", "b_hh", "lengths")
    )
    if cell == "lstm":
        y, hn, cn, saved = be.lstm_fwd(x, h0, a["c0"], w_ih, w_hh, b_ih, b_hh, None, lengths, True)
        return (y, hn, cn, *be.lstm_bwd(saved, *grads)[:7])
    y, hn, saved = be.gru_fwd(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, True)
    return (y, hn, *be.gru_bwd(saved, *grads))


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
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_matches_reference(cell, case, dtype):
    T, B, n_in, H, lengths, threads = case
    a = _make(cell, T, B, n_in, H, dtype, True, lengths)
    grads = _grads(cell, T, B, H, dtype)
    with _num_threads(threads):
        got = _contract_run(CPP, cell, a, grads)
    want = _contract_run(REF, cell, a, grads)
    # Both compute in the same acc dtype; what differs is summation order (and for bf16 the
    # rounding of y, which feeds dW_hh, against the reference's saved float32 state).
    tol = {torch.float64: (1e-12, 1e-10), torch.float32: (2e-5, 2e-5), torch.bfloat16: (3e-2, 3e-2)}
    atol, rtol = tol[dtype]
    for i, (g, w) in enumerate(zip(got, want)):
        assert (g is None) == (w is None), f"output {i}"
        if g is not None:
            assert g.dtype == w.dtype, f"output {i}: {g.dtype} vs {w.dtype}"
            torch.testing.assert_close(g, w, atol=atol, rtol=rtol, msg=lambda m, i=i: f"#{i}: {m}")


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_padding_semantics(cell):
    """y is 0 at padded steps, the final state is the one after step len-1, and inputs at padded
    steps (even NaN ones) do not reach anything."""
    T, B, n_in, H = 6, 3, 4, 10
    a = _make(cell, T, B, n_in, H, torch.float64, True, [6, 2, 4])
    a["x"][2:, 1] = float("nan")
    a["x"][4:, 2] = float("nan")
    out = getattr(ops, f"{cell}_fwd")(*_fwd_args(cell, a, True))
    y, hn = out[0], out[1]
    assert torch.equal(y[2:, 1], torch.zeros(T - 2, H, dtype=y.dtype))
    assert torch.equal(y[4:, 2], torch.zeros(T - 4, H, dtype=y.dtype))
    assert torch.isfinite(y).all() and torch.isfinite(hn).all()
    torch.testing.assert_close(hn, torch.stack([y[5, 0], y[1, 1], y[3, 2]]), rtol=0, atol=0)
    dy = torch.randn(T, B, H, dtype=torch.float64)
    dy[2:, 1] = float("nan")  # must be ignored at padded steps
    grads = (dy, *_grads(cell, T, B, H, torch.float64)[1:])
    dx = getattr(ops, f"{cell}_bwd")(*_bwd_args(cell, a, out, grads))[0]
    assert torch.isfinite(dx[:2, 1]).all()
    assert torch.equal(dx[2:, 1], torch.zeros(T - 2, n_in, dtype=dx.dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_nan_and_inf_propagate(cell, dtype):
    """No fast-math: a NaN in x makes that row's outputs NaN (as in torch), and saturating inputs
    (+inf pre-activations) saturate the gates instead of giving NaN."""
    T, B, n_in, H = 3, 2, 4, 9
    a = _make(cell, T, B, n_in, H, dtype)
    a["x"][1, 0, 2] = float("nan")
    y, hn = getattr(ops, f"{cell}_fwd")(*_fwd_args(cell, a, False))[:2]
    assert torch.isnan(y[1:, 0]).all() and torch.isnan(hn[0]).all()
    assert torch.isfinite(y[:, 1]).all() and torch.isfinite(y[0]).all()
    a = _make(cell, T, B, n_in, H, dtype)
    a["x"][0, 1] = float("inf")
    a["w_ih"].abs_()  # every input pre-activation of row 1 at step 0 is +inf
    y = getattr(ops, f"{cell}_fwd")(*_fwd_args(cell, a, False))[0]
    assert not torch.isnan(y[0, 1]).any()


def _float32_tanh_via_lstm(x):
    """tanh as the cpp kernels compute it in float32 (csrc/cpu/cpu_common.h: vtanh), observed
    through the public op: a one-step LSTM with I = H = 1, c0 = 0, the input gate saturated to
    exactly 1 (bias 100) and g's pre-activation = x, so that c_1 = 1 * tanh(x) exactly."""
    n = x.numel()
    w_ih = torch.tensor([[0.0], [0.0], [1.0], [0.0]])
    b_ih = torch.tensor([100.0, 0.0, 0.0, 0.0])
    zeros = torch.zeros(n, 1)
    out = ops.lstm_fwd(
        x.view(1, n, 1), zeros, zeros, w_ih, torch.zeros(4, 1), b_ih, torch.zeros(4), None, False
    )
    return out[2].view(-1)


def test_float32_tanh_accuracy():
    """The kernels' own float32 tanh (Taylor series below |x| = 0.4, exp-based above) stays
    within 2.5 ulp of the float64 tanh over a dense grid; NaN stays NaN, large |x| gives +-1."""
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


# ----------------------------------------------------------------------------- torch.compile
@pytest.mark.parametrize("cls", [fused_rnn.LSTM, fused_rnn.GRU], ids=["lstm", "gru"])
def test_compile_fullgraph_cpp(cls):
    torch._dynamo.reset()
    m = cls(3, 5, backend="cpp")
    x = torch.randn(4, 2, 3, requires_grad=True)
    y_eager = m(x)[0]
    (gx_eager,) = torch.autograd.grad(y_eager.sum(), x)
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    y = compiled(x)[0]
    (gx,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(y, y_eager)
    torch.testing.assert_close(gx, gx_eager)


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
    assert CPP.supports("lstm", x, False) is None
    assert "proj_size" in CPP.supports("lstm", x, True)
    assert "float16, bfloat16" in CPP.supports("gru", x.to(torch.complex64), False)
    assert "runs on cuda" in CudaBackend().supports("gru", x, False)
    if not torch.cuda.is_available():
        assert CudaBackend().available() is not None


def test_stale_library_detected(tmp_path):
    """A library older than the sources it was built from is reported (editable installs)."""
    lib = tmp_path / "_C.so"
    lib.write_bytes(b"")
    os.utime(lib, (0, 0))
    stale = _stale_sources(str(lib))
    assert "csrc/ops.cpp" in stale and "csrc/cpu/lstm.cpp" in stale
