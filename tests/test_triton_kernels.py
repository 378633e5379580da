"""Kernel-level tests of the Triton backend: every kernel path (in-kernel time loop with W_hh
resident on chip or streamed, and one launch per step) for every cell (LSTM, GRU, RNN tanh /
relu, LSTM with proj_size) against torch.nn in float64, with several programs per launch,
several K chunks, per-sequence lengths and initial states; the half dtypes; the custom ops
(opcheck, torch.compile); the choice of path. On a CPU-only machine they run in Triton's
interpreter (tests/conftest.py sets TRITON_INTERPRET=1), so shapes stay tiny.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import fused_rnn  # noqa: F401  (conftest has set TRITON_INTERPRET before this import)
from fused_rnn.cells import CELLS, Cell

triton_pkg = pytest.importorskip("fused_rnn.triton")
from fused_rnn.triton import config  # noqa: E402
from fused_rnn.triton.backend import TritonBackend  # noqa: E402
from fused_rnn.triton.cells import SPECS  # noqa: E402
from fused_rnn.triton.common import INTERPRET  # noqa: E402

BE = TritonBackend()
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
# The cells as tested: "lstm_proj" is the LSTM with proj_size = H // 2.
VARIANTS = ["lstm", "gru", "rnn_tanh", "rnn_relu", "lstm_proj"]


def _module(variant: str, n_in: int, H: int, bias: bool) -> torch.nn.RNNBase:
    if variant.startswith("lstm"):
        return torch.nn.LSTM(n_in, H, bias=bias, proj_size=H // 2 if variant == "lstm_proj" else 0)
    if variant == "gru":
        return torch.nn.GRU(n_in, H, bias=bias)
    return torch.nn.RNN(n_in, H, bias=bias, nonlinearity=variant.removeprefix("rnn_"))


def _weights(mod: torch.nn.RNNBase) -> list:
    """[w_ih, w_hh, b_ih, b_hh, w_hr] of layer 0, None where the module has none."""
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")
    return [getattr(mod, f"{n}_l0", None) for n in names]


def _case(variant, T, B, n_in, H, lengths, bias, dtype):
    """nn.RNNBase-initialised weights and random inputs in ``dtype`` on DEV: (x, hx), params
    [w_ih, w_hh, b_ih, b_hh, w_hr], lengths, (dy, dhn)."""
    mod = _module(variant, n_in, H, bias)
    params = [None if w is None else w.detach().to(DEV, dtype) for w in _weights(mod)]
    P = mod.proj_size or H
    lstm = variant.startswith("lstm")
    x = torch.randn(T, B, n_in, device=DEV).to(dtype)
    hx = (torch.randn(B, P, device=DEV).to(dtype),)
    hx += (torch.randn(B, H, device=DEV).to(dtype),) if lstm else ()
    dy = torch.randn(T, B, P, device=DEV).to(dtype)
    dhn = tuple(torch.randn_like(h) for h in hx)
    lens = None if lengths is None else torch.tensor(lengths, device=DEV)
    if lens is not None:
        dy = dy * (torch.arange(T, device=DEV)[:, None] < lens)[..., None]  # contract: ignored
    return (x, hx), params, lens, (dy, dhn)


def _cell(variant):
    return CELLS[variant.removesuffix("_proj")]


def _run(variant, inputs, params, lengths, grads_in):
    """Forward + backward through the Triton backend: [y, *hn], [dx, *dhx, dw_ih, dw_hh,
    db_ih, db_hh, dw_hr]."""
    (x, hx), (dy, dhn) = inputs, grads_in
    y, hn, saved = BE.fwd(_cell(variant), x, hx, *params, lengths, True)
    dx, dhx, *dw = BE.bwd(_cell(variant), saved, dy, dhn)
    return [y, *hn], [dx, *dhx, *dw]


def _oracle(variant, inputs, params, lengths, grads_in, dtype, device):
    """The same through torch.nn in ``dtype`` on ``device``: each sequence alone up to its
    length (outputs past it 0), or the whole batch at once without lengths."""
    (x, hx), (dy, dhn) = inputs, grads_in
    T, B, n_in = x.shape
    mod = _module(variant, n_in, hx[-1].shape[1], params[2] is not None).to(device, dtype)
    with torch.no_grad():
        for w, v in zip(_weights(mod), params):
            if w is not None:
                w.copy_(v)
    x, *hx = (t.detach().to(device, dtype).requires_grad_() for t in (x, *hx))
    dy, *dhn = (t.to(device, dtype) for t in (dy, *dhn))
    spans = (
        [(slice(0, B), T)]
        if lengths is None
        else [(slice(b, b + 1), int(n)) for b, n in enumerate(lengths)]
    )
    y, hn, loss = torch.zeros_like(dy), [torch.zeros_like(h) for h in hx], 0
    for bs, n in spans:
        h_in = tuple(h[None, bs] for h in hx)
        out, h_out = mod(x[:n, bs], h_in if len(hx) == 2 else h_in[0])
        h_out = h_out if len(hx) == 2 else (h_out,)
        loss = loss + (out * dy[:n, bs]).sum()
        with torch.no_grad():
            y[:n, bs] = out
        for k, h in enumerate(h_out):
            loss = loss + (h[0] * dhn[k][bs]).sum()
            with torch.no_grad():
                hn[k][bs] = h[0]
    weights = _weights(mod)
    present = [w for w in weights if w is not None]
    grads = iter(torch.autograd.grad(loss, [x, *hx, *present]))
    g = [next(grads) for _ in range(1 + len(hx))]
    g += [None if w is None else next(grads) for w in weights]
    return [y, *hn], g


def _compare(got, want, atol, rtol, what):
    for k, (g, w) in enumerate(zip(got, want, strict=True)):
        assert (g is None) == (w is None), f"{what}[{k}]: None mismatch"
        if g is None:
            continue
        assert g.shape == w.shape, f"{what}[{k}]: shape {tuple(g.shape)} != {tuple(w.shape)}"
        assert g.dtype == w.dtype or w.dtype == torch.float64, f"{what}[{k}]: dtype {g.dtype}"
        torch.testing.assert_close(
            g.double().cpu(), w.double().cpu(), atol=atol, rtol=rtol, msg=f"{what}[{k}]"
        )


@pytest.mark.parametrize("path", config.PATHS)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_fp32_matches_torch_float64(monkeypatch, path, variant, case):
    monkeypatch.setenv(config.PATH_ENV, path)
    inputs, params, lens, grads_in = _case(variant, *CASES[case], torch.float32)
    outs, grads = _run(variant, inputs, params, lens, grads_in)
    want_outs, want_grads = _oracle(variant, inputs, params, lens, grads_in, torch.float64, "cpu")
    # fp32 kernels against float64: errors seen here are ~1e-6 (docs/triton_backend.md)
    _compare(outs, want_outs, 1e-5, 1e-5, f"{variant} outputs")
    _compare(grads, want_grads, 2e-5, 1e-5, f"{variant} grads")
    if lens is not None:  # outputs past each sequence's end are exactly zero
        pad = torch.arange(outs[0].shape[0], device=DEV)[:, None] >= lens
        assert torch.all(outs[0][pad] == 0)


def _check_half(variant, dtype, T, B, n_in, H, lengths):
    """In half precision the kernel's error against float64 is at most twice the baseline's
    error in the same dtype. Baseline: on the CPU (the interpreter's dots run in fp32) torch.nn
    in fp32 on the same half values, rounded to the dtype (fp32 state and GEMMs, as the
    reference backend); on a GPU, where the kernel rounds h to the dtype for the tensor cores
    as cuDNN does, torch.nn in the dtype (full lengths)."""
    inputs, params, lens, grads_in = _case(variant, T, B, n_in, H, lengths, True, dtype)
    exact = _oracle(variant, inputs, params, lens, grads_in, torch.float64, "cpu")
    ours = _run(variant, inputs, params, lens, grads_in)
    if DEV == "cpu":
        base = _oracle(variant, inputs, params, lens, grads_in, torch.float32, "cpu")
        base = [[None if t is None else t.to(dtype) for t in grp] for grp in base]
    else:
        assert lens is None, "the cuDNN baseline runs full-length sequences"
        try:
            base = _oracle(variant, inputs, params, lens, grads_in, dtype, DEV)
        except RuntimeError as e:  # bf16 RNNs need cuDNN >= 9.13 (TARGETS.md)
            pytest.skip(f"no nn baseline for {variant} in {dtype} here: {e}")
    for grp in range(2):
        for k, (o, b, e) in enumerate(zip(ours[grp], base[grp], exact[grp])):
            if e is None:
                continue
            assert o.dtype == dtype and o.shape == e.shape
            err = (o.double().cpu() - e).abs().max().item()
            ref_err = (b.double().cpu() - e).abs().max().item()
            # Floor: one rounding step of the dtype at the tensor's scale. The input projection
            # is rounded to the dtype (as cuDNN does; the baseline keeps it in fp32), so an
            # output can land one ulp away from the baseline's rounding.
            floor = torch.finfo(dtype).eps * e.abs().max().item()
            assert err <= 2 * ref_err + floor, f"{variant} {dtype} [{grp}][{k}]: {err} vs {ref_err}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_half_error_within_2x_baseline(variant, dtype):
    T, B, n_in, H, lengths, _ = CASES["T5-B5-I4-H20-len-nobias"]
    _check_half(variant, dtype, T, B, n_in, H, lengths)


def test_final_state_is_state_at_each_length():
    """hn / cn are the state after step lengths[b]-1: running each sequence alone to its own
    length gives the same final state."""
    lengths = [6, 2, 4]
    (x, hx), params, lens, _ = _case("lstm", 6, 3, 5, 12, lengths, True, torch.float32)
    y, hn, _ = BE.fwd(CELLS["lstm"], x, hx, *params, lens, False)
    for b, n in enumerate(lengths):
        hb = tuple(h[b : b + 1] for h in hx)
        yb, hnb, _ = BE.fwd(CELLS["lstm"], x[:n, b : b + 1].contiguous(), hb, *params, None, False)
        for h, want in zip(hn, hnb, strict=True):
            torch.testing.assert_close(h[b : b + 1], want, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(y[:n, b : b + 1], yb, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("variant", ["gru", "rnn_relu"])
def test_inference_skips_saved_state(variant):
    (x, hx), params, _, _ = _case(variant, 4, 2, 3, 8, None, True, torch.float32)
    y, hn, saved = BE.fwd(_cell(variant), x, hx, *params, None, False)
    y2, hn2, saved2 = BE.fwd(_cell(variant), x, hx, *params, None, True)
    assert saved == () and len(saved2) > 0
    torch.testing.assert_close(y, y2, atol=0, rtol=0)
    torch.testing.assert_close(hn, hn2, atol=0, rtol=0)


@pytest.mark.parametrize("variant", ["lstm", "gru", "rnn_tanh"])
def test_custom_ops_opcheck(variant):
    """The two custom ops have consistent fake kernels and schemas (torch.library.opcheck)
    for a cell with c (LSTM), one with a separate hidden-side column (GRU) and one that saves
    no activations (RNN)."""
    spec = SPECS[variant]
    T, B, H = 3, 2, 4
    lens = torch.tensor([3, 2], device=DEV)
    h0, c0 = torch.randn(B, H, device=DEV), torch.randn(B, H, device=DEV)
    c0 = c0 if spec.has_c else None
    w = torch.randn(spec.G * H, H, device=DEV) * 0.3
    xp = torch.randn(T, B, spec.G * H, device=DEV)
    bias = torch.randn(spec.NG * H, device=DEV)
    ops = torch.ops.fused_rnn
    torch.library.opcheck(ops.triton_recurrence_fwd, (spec.kid, xp, w, bias, lens, h0, c0, True))
    _, hs, cs, gates = ops.triton_recurrence_fwd(spec.kid, xp, w, bias, lens, h0, c0, True)
    dy = torch.randn(T, B, H, device=DEV)
    args = (spec.kid, w, lens, gates, hs, cs, dy, h0, c0)
    torch.library.opcheck(ops.triton_recurrence_bwd, args)


@pytest.mark.parametrize(
    "bad,match",
    [
        ("w_dtype", "xp has dtype"),
        ("w_shape", r"w_hh has shape \(32, 7\)"),
        ("lengths", "lengths has dtype"),
        ("strided", "xp must be contiguous"),
        ("no_c0", "c0 must be given iff"),
        ("cell", "unknown cell id 9"),
    ],
)
def test_custom_ops_reject_bad_arguments(bad, match):
    """Raw-pointer kernels must never see a tensor of the wrong shape or layout."""
    T, B, H = 3, 2, 8
    xp, w = torch.randn(T, B, 4 * H, device=DEV), torch.randn(4 * H, H, device=DEV)
    lens, h0 = torch.tensor([3, 2], device=DEV), torch.zeros(B, H, device=DEV)
    c0, cell = h0, SPECS["lstm"].kid
    if bad == "w_dtype":  # half xp with fp32 weights (fp32 xp with half weights is allowed)
        xp = xp.half()
    elif bad == "w_shape":
        w = torch.randn(4 * H, 7, device=DEV)
    elif bad == "lengths":
        lens = lens.int()
    elif bad == "strided":
        xp = torch.randn(B, T, 4 * H, device=DEV).transpose(0, 1)
    elif bad == "no_c0":
        c0 = None
    else:
        cell = 9
    bias = torch.zeros(4 * H, device=DEV)
    with pytest.raises(ValueError, match=match):
        torch.ops.fused_rnn.triton_recurrence_fwd(cell, xp, w, bias, lens, h0, c0, True)


def test_torch_compile_fullgraph_traces_the_ops():
    """Forward and backward through the backend compile as one graph (no graph break)."""
    (x, hx), params, lens, (dy, dhn) = _case("lstm", 3, 2, 4, 8, [3, 2], True, torch.float32)
    cell = CELLS["lstm"]

    def fwd_bwd(x, h0, c0, w_ih, w_hh, b_ih, b_hh, dy, dhn, dcn):
        y, hn, saved = BE.fwd(cell, x, (h0, c0), w_ih, w_hh, b_ih, b_hh, None, lens, True)
        dx, dhx, *dw = BE.bwd(cell, saved, dy, (dhn, dcn))
        return (y, *hn, dx, *dhx, *dw[:4])

    args = (x, *hx, *params[:4], dy, *dhn)
    compiled = torch.compile(fwd_bwd, fullgraph=True, backend="aot_eager")
    _compare(list(compiled(*args)), list(fwd_bwd(*args)), 0, 0, "compiled")


def test_supports_and_available():
    assert BE.available() is None
    x = torch.empty(1, 1, 1, device=DEV)
    for name, cell in CELLS.items():
        assert BE.supports(cell, x, False) is None, name
    assert BE.supports(CELLS["lstm"], x, True) is None
    assert "LSTM only" in BE.supports(CELLS["gru"], x, True)
    assert "not implemented" in BE.supports(Cell("mgu", "MGU", 2, 1), x, False)
    assert BE.supports("rnn_relu", x, False) is None  # a name works too
    assert "float64" in BE.supports(CELLS["gru"], x.double(), False)
    other = "cuda" if DEV == "cpu" else "cpu"
    if other == "cpu" or torch.cuda.is_available():
        assert other in BE.supports(CELLS["gru"], torch.empty(1, 1, 1, device=other), False)


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
    """The GPU script's path benchmark, on a tiny shape here: one row per path plus nn.RNN,
    each with both timings and no error note."""
    from fused_rnn.triton.bench_paths import time_case

    rows = time_case("rnn_tanh", 2, 2, 3, 8, torch.float32, config.PATHS, device=DEV)
    assert [r[6] for r in rows] == [f"triton-{p}" for p in config.PATHS] + ["torch(cudnn)"]
    assert all(r[9] == "" and r[7] > 0 and r[8] > 0 for r in rows), rows


# ----------------------------------------------------------------------- full shapes, GPU
@pytest.mark.gpu
@pytest.mark.parametrize("path", config.PATHS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_gpu_full_shape_fp32(monkeypatch, path, variant):
    monkeypatch.setenv(config.PATH_ENV, path)
    T, B, H = 64, 16, (256 if path == "resident" else 768)
    lengths = torch.randint(1, T + 1, (B,)).tolist()
    inputs, params, lens, grads_in = _case(variant, T, B, 256, H, lengths, True, torch.float32)
    outs, grads = _run(variant, inputs, params, lens, grads_in)
    want = _oracle(variant, inputs, params, lens, grads_in, torch.float64, "cpu")
    _compare(outs, want[0], 1e-4, 1e-4, f"{variant} outputs")
    _compare(grads, want[1], 1e-3, 1e-4, f"{variant} grads")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("path", [None, *config.PATHS])
@pytest.mark.parametrize("variant", VARIANTS)
def test_gpu_anchor_shape_half(monkeypatch, path, variant, dtype):
    """The TARGETS.md shape (H=768 B=16, shortened to T=64) in half precision on every path
    that can run it (resident: H=512, where both directions hold W_hh on chip), against
    cuDNN's error."""
    if path is not None:
        monkeypatch.setenv(config.PATH_ENV, path)
    H = 512 if path == "resident" else 768
    _check_half(variant, dtype, 64, 16, 768, H, None)


@pytest.mark.gpu
def test_gpu_new_length_does_not_recompile():
    from fused_rnn.triton.recurrence import _fwd_kernel

    (x, hx), params, _, _ = _case("lstm", 8, 4, 8, 64, None, True, torch.bfloat16)
    BE.fwd(CELLS["lstm"], x, hx, *params, None, False)
    n = sum(len(c[0]) for c in _fwd_kernel.device_caches.values())
    x2 = torch.randn(13, 4, 8, device=DEV, dtype=torch.bfloat16)
    BE.fwd(CELLS["lstm"], x2, hx, *params, None, False)
    assert sum(len(c[0]) for c in _fwd_kernel.device_caches.values()) == n


def test_default_path_for_a_small_case_is_resident(monkeypatch):
    monkeypatch.delenv(config.PATH_ENV, raising=False)
    assert os.environ.get(config.PATH_ENV) is None
    assert config.choose_config(False, 2, 8, torch.float32, torch.device(DEV)).path == "resident"
