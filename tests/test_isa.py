"""The CPU ISA dispatch of the cpp backend (csrc/cpu/isa.h) and the auto policy around it.

Host dependence, stated: test_gemm_paths_agree runs the "avx2" path only where this CPU has
AVX2+FMA (it is skipped, saying so, elsewhere); every other test here means the same on any
x86-64 CPU.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
import torch
from test_ops import CPP, _contract_run, _grads, _make, _num_threads

import fused_rnn
from fused_rnn import cpu_policy
from fused_rnn.native import NativeBackend
from fused_rnn.ops import load_library

pytestmark = pytest.mark.skipif(load_library() is not None, reason="fused_rnn._C not built")


def _isa():
    return torch.ops.fused_rnn.cpu_isa()


def test_isa_report_and_override(monkeypatch):
    host, path, reason = _isa()
    assert path in ("avx2", "library") and reason
    monkeypatch.setenv("FUSED_RNN_CPU_ISA", "generic")
    assert _isa()[1] == "library" and "forced" in _isa()[2]
    monkeypatch.setenv("FUSED_RNN_CPU_ISA", "avx2")
    can = host in ("avx2", "avx512", "avx512_bf16", "amx")
    assert _isa()[1] == ("avx2" if can else "library")


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_gemm_paths_agree(monkeypatch, cell):
    """The AVX2 panel kernel and the library GEMM give the same results (each within 2x of the
    other's float32 error against float64, plus a few ulps), the work split over 2 threads."""
    monkeypatch.setenv("FUSED_RNN_CPU_ISA", "avx2")
    if _isa()[1] != "avx2":
        pytest.skip(f"this CPU ({_isa()[0]}) cannot run the AVX2 path")
    # H = 72: two chunks per step (units 0-31, 32-71), the last panel half full;
    # B = 13: two 6-row tiles and a 1-row tail.
    a = _make(cell, 5, 13, 19, 72, torch.float32, True, [5, 2, 4, 5, 1, 3, 5, 5, 4, 2, 5, 1, 3])
    grads = _grads(cell, 5, 13, 72, torch.float32)
    out = {}
    for path in ("avx2", "generic"):
        monkeypatch.setenv("FUSED_RNN_CPU_ISA", path)
        with _num_threads(2):
            out[path] = _contract_run(CPP, cell, a, grads)
    a64 = {k: (v.double() if v is not None and v.is_floating_point() else v) for k, v in a.items()}
    ref = _contract_run(CPP, cell, a64, tuple(g.double() for g in grads))
    eps = torch.finfo(torch.float32).eps
    for i, (p, u, r) in enumerate(zip(out["avx2"], out["generic"], ref)):
        if r is None:
            continue
        err_p = (p.double() - r).abs().max().item()
        err_u = (u.double() - r).abs().max().item()
        scale = r.abs().max().item()
        assert err_p <= 2 * err_u + 4 * eps * scale, (i, err_p, err_u, scale)
        assert err_u <= 2 * err_p + 4 * eps * scale, (i, err_p, err_u, scale)


# Instructions that an AVX-only (or older) x86-64 CPU cannot execute: FMA, AVX2's integer ymm
# operations, broadcasts, permutes and gathers.
_AVX2_ONLY = re.compile(
    r"\t(vfn?m(add|sub)\w*|vpbroadcast\w*|vperm[dq]|vpermps|vgather\w*|vinserti128|"
    r"vextracti128|vpmaskmov\w*|vps[lr][la]v\w*|vbroadcasti128)\b|\tvp\w+\s.*%ymm"
)


def test_avx2_code_only_behind_the_cpu_check():
    """Static check of the built library (the same on any host): every function with an AVX2 /
    FMA instruction is a kernel in fused_rnn::cpu (reached only through dispatch.cpp's CPU
    check) or ATen's AVX2 Vectorized; none is registration or boxing code, which runs at
    import / before the check, so the library loads on any x86-64 CPU."""
    objdump = shutil.which("objdump")
    if objdump is None or os.uname().machine != "x86_64":
        pytest.skip("needs objdump on x86-64")
    lib = fused_rnn._C.__file__
    text = subprocess.run(
        [objdump, "-d", "--no-show-raw-insn", "-C", lib], capture_output=True, text=True
    ).stdout
    offenders, fn = set(), None
    for line in text.splitlines():
        m = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if m:
            fn = m.group(1)
        elif fn and _AVX2_ONLY.search(line):
            offenders.add(fn)
    assert offenders, "no AVX2 code at all: the kernels were not built for AVX2"
    allowed = re.compile(r"^(\S+ )*(fused_rnn::cpu::|at::vec::AVX2::|void fused_rnn::cpu::)")
    bad = sorted(f for f in offenders if not allowed.match(f) or "Checked<" in f)
    assert not bad, bad


def test_native_backend_matches_torch():
    """The native backend is torch's op: same outputs and gradients as nn.LSTM, packed too."""
    torch.manual_seed(0)
    ref = torch.nn.GRU(5, 7, num_layers=2, bidirectional=True)
    ours = fused_rnn.GRU(5, 7, num_layers=2, bidirectional=True, backend="native")
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(6, 3, 5)
    lengths = torch.tensor([4, 6, 2])
    for pack in (False, True):
        inp = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
        inp = inp if pack else x
        ya, ha = ref(inp)
        yb, hb = ours(inp)
        ya = ya.data if pack else ya
        yb = yb.data if pack else yb
        torch.testing.assert_close(yb, ya, rtol=0, atol=0)
        torch.testing.assert_close(hb, ha, rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["lstm", "gru", "rnn"])
def test_native_calls_go_to_torchs_forward(monkeypatch, mode):
    """A call that resolves to "native" is handed whole to torch's own forward (tensor, packed
    and unbatched input; results identical to torch's module); calls the fused path must serve
    (another backend, autocast, torch.func, empty batches) are not."""
    from fused_rnn import modules

    calls = []
    real = modules._TORCH_FORWARD[mode]

    def spy(module, input, hx):
        calls.append(type(input).__name__)
        return real(module, input, hx)

    monkeypatch.setitem(modules._TORCH_FORWARD, mode, spy)
    cls = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}[mode]
    torch.manual_seed(0)
    ref = getattr(torch.nn, cls)(5, 7, num_layers=2)
    ours = getattr(fused_rnn, cls)(5, 7, num_layers=2, backend="native")
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(6, 3, 5)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, [6, 4, 2])
    for inp in (x, packed, x[:, 0]):
        ya, ha = ref(inp)
        yb, hb = ours(inp)
        ya, yb = (ya.data, yb.data) if inp is packed else (ya, yb)
        torch.testing.assert_close(yb, ya, rtol=0, atol=0)
        torch.testing.assert_close(hb, ha, rtol=0, atol=0)
    assert calls == ["Tensor", "PackedSequence", "Tensor"]
    calls.clear()
    ours.backend = "reference"
    ours(x)
    ours.backend = "native"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours(x)
    ours(x[:, :0])  # B = 0: the reference keeps the empty batch in the graph
    params = {k: v.detach() for k, v in ours.named_parameters()}
    torch.func.grad(lambda p: torch.func.functional_call(ours, p, (x,))[0].sum())(params)
    assert calls == []


def test_policy_explains_its_choice():
    x = torch.randn(8, 4, 16)
    with torch.no_grad():
        line = fused_rnn.explain("lstm", x)
    assert line.startswith("auto -> ") and ":" in line
    assert NativeBackend().supports("lstm", x, True) is None
    assert "LSTM option" in NativeBackend().supports("gru", x, True)
    # projections have their own table ("lstm_proj"); a dtype no table has goes to native
    choice = cpu_policy.order_for(("cpp", "native", "reference"), "lstm", x, True, False)
    assert choice.order[0] in ("cpp", "native") and "lstm_proj" in choice.reason
    choice = cpu_policy.order_for(("cpp", "native", "reference"), "lstm", x.double(), False, False)
    assert choice.order[0] == "native" and "not measured" in choice.reason
    assert choice.order[1:] == ("cpp", "reference")
