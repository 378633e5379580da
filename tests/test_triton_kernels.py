"""Kernel-level tests of the Triton backend: every kernel path (in-kernel time loop with W_hh
resident on chip or streamed, and one launch per step) against the float64 reference
backend, with several programs per launch, several K chunks, per-sequence lengths and initial
states; the half dtypes; the custom ops (opcheck, torch.compile); the choice of path. On a
CPU-only machine they run in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1),
so shapes stay tiny.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import fused_rnn
from fused_rnn.reference import ReferenceBackend

triton_pkg = pytest.importorskip("fused_rnn.triton")
from fused_rnn.triton import config  # noqa: E402
from fused_rnn.triton.backend import TritonBackend  # noqa: E402
from fused_rnn.triton.common import INTERPRET  # noqa: E402

BE = TritonBackend()
REF = ReferenceBackend()
DEV = "cpu" if INTERPRET else "cuda"
pytestmark = pytest.mark.skipif(BE.available() is not None, reason=str(BE.available()))

# (T, B, I, H, lengths, bias). Under the interpreter B=5 spans two batch blocks (BB=4); H=20
# spans two hidden blocks of the per-step kernel and two K chunks of the per-step and streamed
# kernels (BH = BK = 16), and the resident kernel holds its K in two pieces (16 + 8); H=13 in
# one (16).
CASES = {
    "T5-B3-I7-H13-bias": (5, 3, 7, 13, None, True),
    "T5-B5-I4-H20-len-nobias": (5, 5, 4, 20, [5, 1, 3, 5, 2], False),
}


def _params(cell, n_in, H, dtype, bias):
    G = 4 if cell == "lstm" else 3
    k = H**-0.5
    w = [torch.empty(G * H, n_in).uniform_(-k, k), torch.empty(G * H, H).uniform_(-k, k)]
    b = [torch.empty(G * H).uniform_(-k, k) for _ in range(2)] if bias else [None, None]
    return [None if p is None else p.to(DEV, dtype) for p in w + b]


def _run(be, cell, inputs, params, lengths, grads_in):
    """Forward + backward through one backend; returns every output and every gradient (the
    bias gradients as None without biases, as the contract says: the reference computes them
    anyway, so they are dropped here)."""
    x, h0, c0 = inputs
    dy, dhn, dcn = grads_in
    generic = fused_rnn.backends._as_backend(be)
    c = fused_rnn.cells.cell_for_mode(cell)
    hx, dhn_t = ((h0, c0), (dhn, dcn)) if cell == "lstm" else ((h0,), (dhn,))
    y, hn, saved = generic.fwd(c, x, hx, *params, None, lengths, True)
    dx, dhx, dw_ih, dw_hh, db_ih, db_hh, _ = generic.bwd(c, saved, dy, dhn_t)
    outs, grads = [y, *hn], [dx, *dhx, dw_ih, dw_hh, db_ih, db_hh]
    if params[2] is None:
        grads[-2:] = [None, None]
    return outs, grads


def _case(cell, T, B, n_in, H, lengths, bias, dtype):
    """Random inputs in ``dtype`` on DEV, and the same values in float64 for the oracle."""
    params = _params(cell, n_in, H, dtype, bias)
    x = torch.randn(T, B, n_in, device=DEV).to(dtype)
    h0 = torch.randn(B, H, device=DEV).to(dtype)
    c0 = torch.randn(B, H, device=DEV).to(dtype)
    dy = torch.randn(T, B, H, device=DEV).to(dtype)
    dhn = torch.randn(B, H, device=DEV).to(dtype)
    dcn = torch.randn(B, H, device=DEV).to(dtype)
    lens = None if lengths is None else torch.tensor(lengths, device=DEV)
    if lens is not None:
        dy = dy * (torch.arange(T, device=DEV)[:, None] < lens)[..., None]  # contract: ignored
    return (x, h0, c0), params, lens, (dy, dhn, dcn)


def _f64(ts):
    return [None if t is None else t.double() for t in ts]


def _compare(got, want, atol, rtol, what):
    for k, (g, w) in enumerate(zip(got, want)):
        assert (g is None) == (w is None), f"{what}[{k}]: None mismatch"
        if g is None:
            continue
        assert g.shape == w.shape, f"{what}[{k}]: shape {tuple(g.shape)} != {tuple(w.shape)}"
        torch.testing.assert_close(g.double(), w.double(), atol=atol, rtol=rtol, msg=f"{what}[{k}]")


@pytest.mark.parametrize("path", config.PATHS)
@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_fp32_matches_float64_reference(monkeypatch, path, cell, case):
    monkeypatch.setenv(config.PATH_ENV, path)
    inputs, params, lens, grads_in = _case(cell, *CASES[case], torch.float32)
    outs, grads = _run(BE, cell, inputs, params, lens, grads_in)
    r_outs, r_grads = _run(REF, cell, _f64(inputs), _f64(params), lens, _f64(grads_in))
    # fp32 kernels against float64: errors seen here are ~1e-6 (docs/triton_backend.md)
    _compare(outs, r_outs, 1e-5, 1e-5, f"{cell} outputs")
    _compare(grads, r_grads, 2e-5, 1e-5, f"{cell} grads")
    if lens is not None:  # outputs past each sequence's end are exactly zero
        pad = torch.arange(outs[0].shape[0], device=DEV)[:, None] >= lens
        assert torch.all(outs[0][pad] == 0)


def _run_torch(cell, inputs, params, grads_in):
    """nn.LSTM / nn.GRU (cuDNN on a GPU) in the inputs' dtype, full-length sequences: the
    outputs and gradients in _run's layout."""
    x, h0, c0 = (t.detach().requires_grad_() for t in inputs)
    n_in, H = x.shape[2], h0.shape[1]
    mod = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(n_in, H).to(x.device, x.dtype)
    with torch.no_grad():
        for p, v in zip(mod.parameters(), params):
            p.copy_(v)
    dy, dhn, dcn = grads_in
    if cell == "lstm":
        y, (hn, cn) = mod(x, (h0[None], c0[None]))
        outs, wrt = [y, hn[0], cn[0]], [x, h0, c0]
        loss = (y * dy).sum() + (hn[0] * dhn).sum() + (cn[0] * dcn).sum()
    else:
        y, hn = mod(x, h0[None])
        outs, wrt = [y, hn[0]], [x, h0]
        loss = (y * dy).sum() + (hn[0] * dhn).sum()
    grads = torch.autograd.grad(loss, wrt + list(mod.parameters()))
    return [o.detach() for o in outs], list(grads)


def _check_half(cell, dtype, T, B, n_in, H, lengths):
    """In half precision the kernel's error against float64 is at most twice the baseline's
    error in the same dtype. Baseline: on the CPU (the interpreter's dots run in fp32) the
    reference backend, which keeps fp32 state and GEMMs; on a GPU, where the kernel rounds h
    to the dtype for the tensor cores as cuDNN does, nn.LSTM / nn.GRU (full lengths)."""
    inputs, params, lens, grads_in = _case(cell, T, B, n_in, H, lengths, True, dtype)
    exact = _run(REF, cell, _f64(inputs), _f64(params), lens, _f64(grads_in))
    ours = _run(BE, cell, inputs, params, lens, grads_in)
    if DEV == "cpu":
        base = _run(REF, cell, inputs, params, lens, grads_in)
    else:
        assert lens is None, "nn.LSTM baseline runs full-length sequences"
        try:
            base = _run_torch(cell, inputs, params, grads_in)
        except RuntimeError as e:  # bf16 RNNs need cuDNN >= 9.13 (TARGETS.md)
            pytest.skip(f"no nn.{cell.upper()} baseline in {dtype} here: {e}")
    for grp in range(2):
        for k, (o, b, e) in enumerate(zip(ours[grp], base[grp], exact[grp])):
            assert o.dtype == dtype and o.shape == e.shape
            err = (o.double() - e).abs().max().item()
            ref_err = (b.double() - e).abs().max().item()
            # Floor: one rounding step of the dtype at the tensor's scale. The input projection
            # is rounded to the dtype (as cuDNN does; the reference keeps it in fp32), so an
            # output can land one ulp away from the reference's rounding.
            floor = torch.finfo(dtype).eps * e.abs().max().item()
            assert err <= 2 * ref_err + floor, f"{cell} {dtype} [{grp}][{k}]: {err} vs {ref_err}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_half_error_within_2x_reference(cell, dtype):
    T, B, n_in, H, lengths, _ = CASES["T5-B5-I4-H20-len-nobias"]
    _check_half(cell, dtype, T, B, n_in, H, lengths)


def test_final_state_is_state_at_each_length():
    """hn / cn are the state after step lengths[b]-1: running each sequence alone to its own
    length gives the same final state."""
    lengths = [6, 2, 4]
    inputs, params, lens, _ = _case("lstm", 6, 3, 5, 12, lengths, True, torch.float32)
    x, h0, c0 = inputs
    y, hn, cn, _ = BE.lstm_fwd(x, h0, c0, *params, None, lens, False)
    for b, n in enumerate(lengths):
        yb, hb, cb, _ = BE.lstm_fwd(
            x[:n, b : b + 1].contiguous(), h0[b : b + 1], c0[b : b + 1], *params, None, None, False
        )
        torch.testing.assert_close(hn[b : b + 1], hb, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(cn[b : b + 1], cb, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(y[:n, b : b + 1], yb, atol=1e-6, rtol=1e-6)


def test_inference_skips_saved_state():
    inputs, params, _, _ = _case("gru", 4, 2, 3, 8, None, True, torch.float32)
    x, h0, _ = inputs
    y, hn, saved = BE.gru_fwd(x, h0, *params, None, False)
    y2, hn2, saved2 = BE.gru_fwd(x, h0, *params, None, True)
    assert saved == () and len(saved2) > 0
    torch.testing.assert_close(y, y2, atol=0, rtol=0)
    torch.testing.assert_close(hn, hn2, atol=0, rtol=0)


def test_custom_ops_opcheck():
    """The four custom ops have consistent fake kernels and schemas (torch.library.opcheck)."""
    T, B, H = 3, 2, 8
    lens = torch.tensor([3, 2], device=DEV)
    h0, c0 = torch.randn(B, H, device=DEV), torch.randn(B, H, device=DEV)
    w = torch.randn(4 * H, H, device=DEV) * 0.3
    xp = torch.randn(T, B, 4 * H, device=DEV)
    bias = torch.randn(4 * H, device=DEV)
    ops = torch.ops.fused_rnn
    torch.library.opcheck(ops.triton_lstm_fwd, (xp, w, bias, lens, h0, c0, True))
    _, hs, cs, gates = ops.triton_lstm_fwd(xp, w, bias, lens, h0, c0, True)
    dy = torch.randn(T, B, H, device=DEV)
    torch.library.opcheck(ops.triton_lstm_bwd, (w, lens, gates, cs, dy, h0, c0))
    w3, xp3 = w[: 3 * H].contiguous(), xp[..., : 3 * H].contiguous()
    torch.library.opcheck(ops.triton_gru_fwd, (xp3, w3, bias, lens, h0, True))
    _, hs3, gates3 = ops.triton_gru_fwd(xp3, w3, bias, lens, h0, True)
    torch.library.opcheck(ops.triton_gru_bwd, (w3, lens, gates3, hs3, dy, h0))


@pytest.mark.parametrize(
    "bad,match",
    [
        ("w_dtype", "w_hh has dtype"),
        ("w_shape", r"w_hh has shape \(32, 7\)"),
        ("lengths", "lengths has dtype"),
        ("strided", "xp must be contiguous"),
    ],
)
def test_custom_ops_reject_bad_arguments(bad, match):
    """Raw-pointer kernels must never see a tensor of the wrong shape or layout."""
    T, B, H = 3, 2, 8
    xp, w = torch.randn(T, B, 4 * H, device=DEV), torch.randn(4 * H, H, device=DEV)
    lens, h0 = torch.tensor([3, 2], device=DEV), torch.zeros(B, H, device=DEV)
    if bad == "w_dtype":
        w = w.half()
    elif bad == "w_shape":
        w = torch.randn(4 * H, 7, device=DEV)
    elif bad == "lengths":
        lens = lens.int()
    else:
        xp = torch.randn(B, T, 4 * H, device=DEV).transpose(0, 1)
    bias = torch.zeros(4 * H, device=DEV)
    with pytest.raises(ValueError, match=match):
        torch.ops.fused_rnn.triton_lstm_fwd(xp, w, bias, lens, h0, h0, True)


def test_torch_compile_fullgraph_traces_the_ops():
    """Forward and backward through the backend compile as one graph (no graph break)."""
    inputs, params, lens, grads_in = _case("lstm", 3, 2, 4, 8, [3, 2], True, torch.float32)

    def fwd_bwd(x, h0, c0, w_ih, w_hh, b_ih, b_hh, dy, dhn, dcn):
        y, hn, cn, saved = BE.lstm_fwd(x, h0, c0, w_ih, w_hh, b_ih, b_hh, None, lens, True)
        return (y, hn, cn) + tuple(BE.lstm_bwd(saved, dy, dhn, dcn)[:7])

    args = (*inputs, *params, *grads_in)
    compiled = torch.compile(fwd_bwd, fullgraph=True, backend="aot_eager")
    _compare(list(compiled(*args)), list(fwd_bwd(*args)), 0, 0, "compiled")


def test_supports_and_available():
    assert BE.available() is None
    x = torch.empty(1, 1, 1, device=DEV)
    assert BE.supports("lstm", x, False) is None
    assert "proj_size" in BE.supports("lstm", x, True)
    assert "float64" in BE.supports("gru", x.double(), False)
    other = "cuda" if DEV == "cpu" else "cpu"
    if other == "cpu" or torch.cuda.is_available():
        assert other in BE.supports("gru", torch.empty(1, 1, 1, device=other), False)


def test_without_triton_the_backend_says_why():
    """With triton not importable, the registry reports the reason instead of failing."""
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import fused_rnn\n"
        "print(fused_rnn.backend_status()['triton'])\n"
        "print('triton' in fused_rnn.available_backends())"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
    assert out.returncode == 0, out.stderr
    why, listed = out.stdout.splitlines()
    assert "triton is not installed" in why and listed == "False"


def test_path_override_is_validated(monkeypatch):
    monkeypatch.setenv(config.PATH_ENV, "fast")
    with pytest.raises(ValueError, match="must be one of resident, streamed, step"):
        config.choose_config(False, 2, 8, torch.float32, torch.device(DEV))


# ------------------------------------------------------------------- GPU path choice (pure)
H100_SMS = 132


def test_target_shapes_loop_over_time_in_the_kernel():
    """H=768 B=16 bf16 on an H100's 132 SMs: the forward holds W_hh on chip; the backward
    (which also holds a 4x larger dG operand) streams it; no more programs than SMs."""
    for bwd, path in ((False, "resident"), (True, "streamed")):
        cfg = config.gpu_config(bwd, 16, 768, torch.bfloat16, H100_SMS, None)
        assert cfg.path == path
        assert -(-768 // cfg.BH) * -(-16 // cfg.BB) <= H100_SMS


@pytest.mark.parametrize(
    "bwd,B,H,dtype,path,why",
    [
        (False, 16, 2048, torch.bfloat16, "resident", "H=2048"),
        (False, 16, 1024, torch.float32, "resident", "on-chip operands"),
        (True, 16, 1024, torch.bfloat16, "resident", "on-chip operands"),
        (False, 256, 512, torch.bfloat16, "streamed", "SMs"),
    ],
)
def test_paths_refuse_what_they_cannot_run(bwd, B, H, dtype, path, why):
    assert why in config.why_not(path, bwd, B, H, dtype, H100_SMS)
    assert config.gpu_config(bwd, B, H, dtype, H100_SMS, None).path != path
    with pytest.raises(ValueError, match=f"the {path} path cannot run this case"):
        config.gpu_config(bwd, B, H, dtype, H100_SMS, path)


def test_large_batch_falls_back_to_per_step():
    assert config.gpu_config(False, 256, 512, torch.bfloat16, H100_SMS, None).path == "step"


@pytest.mark.parametrize("path", ["resident", "streamed"])
def test_interpreter_time_loop_has_one_program_per_batch_block(path):
    """Under the interpreter programs run one at a time: a grid barrier across hidden blocks
    would never be reached by the programs not yet started."""
    cfg = config.interpreter_config(B=5, H=20, path=path)
    assert cfg.path == path and cfg.BH >= 20


def test_bench_paths_runs_every_path(capsys):
    """The GPU script's path benchmark, on a tiny shape here: one row per path plus nn.LSTM,
    each with both timings and no error note."""
    from fused_rnn.triton.bench_paths import time_case

    rows = time_case("lstm", 2, 2, 3, 8, torch.float32, config.PATHS, device=DEV)
    assert [r[6] for r in rows] == [f"triton-{p}" for p in config.PATHS] + ["torch(cudnn)"]
    assert all(r[9] == "" and r[7] > 0 and r[8] > 0 for r in rows), rows


# ----------------------------------------------------------------------- full shapes, GPU
@pytest.mark.gpu
@pytest.mark.parametrize("path", config.PATHS)
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_gpu_full_shape_fp32(monkeypatch, path, cell):
    monkeypatch.setenv(config.PATH_ENV, path)
    T, B, H = 64, 16, (256 if path == "resident" else 768)
    lengths = torch.randint(1, T + 1, (B,)).tolist()
    inputs, params, lens, grads_in = _case(cell, T, B, 256, H, lengths, True, torch.float32)
    outs, grads = _run(BE, cell, inputs, params, lens, grads_in)
    r_outs, r_grads = _run(REF, cell, _f64(inputs), _f64(params), lens, _f64(grads_in))
    _compare(outs, r_outs, 1e-4, 1e-4, f"{cell} outputs")
    _compare(grads, r_grads, 1e-3, 1e-4, f"{cell} grads")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("path", [None, *config.PATHS])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_gpu_anchor_shape_half(monkeypatch, path, cell, dtype):
    """The TARGETS.md shape (H=768 B=16, shortened to T=64) in half precision on every path
    that can run it (resident: H=512, where both directions hold W_hh on chip), against
    cuDNN's error."""
    if path is not None:
        monkeypatch.setenv(config.PATH_ENV, path)
    H = 512 if path == "resident" else 768
    _check_half(cell, dtype, 64, 16, 768, H, None)


@pytest.mark.gpu
def test_gpu_new_length_does_not_recompile():
    inputs, params, _, _ = _case("lstm", 8, 4, 8, 64, None, True, torch.bfloat16)
    x, h0, c0 = inputs
    BE.lstm_fwd(x, h0, c0, *params, None, None, False)
    from fused_rnn.triton import lstm

    n = sum(len(c[0]) for c in lstm._lstm_fwd_kernel.device_caches.values())
    x2 = torch.randn(13, 4, 8, device=DEV, dtype=torch.bfloat16)
    BE.lstm_fwd(x2, h0, c0, *params, None, None, False)
    assert sum(len(c[0]) for c in lstm._lstm_fwd_kernel.device_caches.values()) == n


def test_default_path_for_a_small_case_is_resident(monkeypatch):
    monkeypatch.delenv(config.PATH_ENV, raising=False)
    assert os.environ.get(config.PATH_ENV) is None
    assert config.choose_config(False, 2, 8, torch.float32, torch.device(DEV)).path == "resident"
