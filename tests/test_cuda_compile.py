"""The CUDA backend (csrc/cuda), checked as far as a machine without a GPU allows, plus the
checks of its two forward paths that need a GPU (marked ``gpu``).

1. Every ``csrc/cuda/*.cu`` compiles with nvcc for sm_80 and sm_90 with the flags torch's
   CUDAExtension adds; ptxas reports no spills and no stack frame for any kernel (local memory in
   these kernels would mean a register array was not kept in registers); registers are printed.
2. ``cell_math.cuh`` (the gate math of every kernel) compiled by g++ matches torch autograd in
   float64: forward values and every gradient.
3. The general path as a whole -- ``bindings.cpp`` with the very same element functions run on
   the host (``FUSED_RNN_CUDA_EMULATE``) -- matches ``nn.LSTM`` / ``nn.GRU`` on packed sequences:
   outputs, final states and all gradients, with and without lengths and biases.
   The real bindings.cpp (CUDA build) is syntax-checked by g++ against torch's headers.
4. (gpu) On a GPU, the persistent and the general forward agree with each other and with a
   float64 reference, in float32, float16 and bfloat16.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

ROOT = Path(__file__).resolve().parents[1]
CUDA_SRC = ROOT / "csrc" / "cuda"
CU_FILES = sorted(CUDA_SRC.glob("*.cu"))
ARCHS = ("80", "90")
NVCC = shutil.which("nvcc") or (
    "/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None
)
# Kernels each file must contain per arch: 4 step kernels x 4 dtypes; forward: 2 cells x (3
# dtypes on CUDA cores + 2 on tensor cores); backward: 2 cells x 3 dtypes.
EXPECTED_KERNELS = {"pointwise.cu": 16, "persistent.cu": 10, "persistent_bwd.cu": 6}


# ------------------------------------------------------------------------------------------------
# 1. nvcc
# ------------------------------------------------------------------------------------------------


def _nvcc_flags() -> list[str]:
    from torch.utils import cpp_extension

    # The same defines as the real build (CUDAExtension), so e.g. implicit half conversions that
    # torch disables fail here too.
    return ["-O3", "-std=c++17", *cpp_extension.COMMON_NVCC_FLAGS, "-Xptxas", "-v"]


def _compile(src: Path, arch: str, out_dir: Path) -> tuple[int, str]:
    """(exit status, nvcc + ptxas output) of compiling src for sm_<arch>.

    A clean result is kept in build/cuda_emu/nvcc/, keyed by a hash of every csrc/cuda source,
    the flags and nvcc's version, so an unchanged tree is not recompiled on every test run
    (FUSED_RNN_TEST_NO_CACHE=1 forces the compile)."""
    import hashlib

    cmd = [NVCC, "-c", f"-arch=sm_{arch}", *_nvcc_flags(), "-o", str(out_dir / f"{src.stem}.o")]
    version = subprocess.run([NVCC, "--version"], capture_output=True, text=True).stdout
    digest = hashlib.sha256((" ".join(cmd[1:-2]) + version).encode())
    for f in sorted(CUDA_SRC.glob("*")):
        if f.is_file():
            digest.update(f.name.encode() + f.read_bytes())
    cache = (
        ROOT / "build" / "cuda_emu" / "nvcc" / f"{src.stem}_sm{arch}_{digest.hexdigest()[:16]}.log"
    )
    if cache.exists() and os.environ.get("FUSED_RNN_TEST_NO_CACHE") != "1":
        return 0, cache.read_text()
    r = subprocess.run([*cmd, str(src)], capture_output=True, text=True, timeout=300)
    log = r.stdout + r.stderr
    if r.returncode == 0:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(log)
    return r.returncode, log


_ENTRY = re.compile(r"Compiling entry function '([^']+)' for 'sm_(\d+)'")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_REGS = re.compile(r"Used (\d+) registers")


def parse_ptxas(log: str) -> list[dict]:
    """One dict per kernel: name, arch, stack, spill_stores, spill_loads, registers."""
    kernels, cur = [], None
    for line in log.splitlines():
        if m := _ENTRY.search(line):
            cur = {"name": m.group(1), "arch": m.group(2)}
            kernels.append(cur)
        elif cur is not None and (m := _FRAME.search(line)):
            cur["stack"], cur["spill_stores"], cur["spill_loads"] = map(int, m.groups())
        elif cur is not None and (m := _REGS.search(line)):
            cur["registers"] = int(m.group(1))
    return kernels


def _short_name(mangled: str) -> str:
    """A readable kernel name: demangled when c++filt exists, namespaces and parameters cut."""
    cxxfilt = shutil.which("c++filt")
    if cxxfilt is None:
        return mangled
    name = subprocess.run([cxxfilt, mangled], capture_output=True, text=True).stdout.strip()
    for cut in ("void ", "fused_rnn::cuda::", "(anonymous namespace)::"):
        name = name.replace(cut, "")
    return name[: name.rfind("(")] if name.endswith(")") else name


def _arch_dir(out: Path, arch: str) -> Path:
    d = out / f"sm{arch}"
    d.mkdir(exist_ok=True)
    return d


@pytest.fixture(scope="module")
def nvcc_results(tmp_path_factory):
    if NVCC is None:
        pytest.skip("nvcc not found: the CUDA sources cannot be compile-checked on this machine")
    out = tmp_path_factory.mktemp("nvcc")
    jobs = [(src, arch) for src in CU_FILES for arch in ARCHS]
    # Two at a time: the CI machine has two cores. Separate object folders per arch.
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda job: _compile(job[0], job[1], _arch_dir(out, job[1])), jobs))
    return {job: res for job, res in zip(jobs, results)}


def test_cuda_sources_exist():
    names = {p.name for p in CU_FILES}
    assert set(EXPECTED_KERNELS) <= names, f"missing CUDA sources: {set(EXPECTED_KERNELS) - names}"


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: f"sm{a}")
@pytest.mark.parametrize("src", CU_FILES, ids=lambda p: p.name)
def test_nvcc_compiles_without_spills(nvcc_results, src, arch):
    rc, log = nvcc_results[(src, arch)]
    assert rc == 0, f"nvcc failed on {src.name} for sm_{arch}:\n{log}"
    kernels = parse_ptxas(log)
    want = EXPECTED_KERNELS.get(src.name)
    if want is not None:
        assert len(kernels) == want, (
            f"{src.name}: {len(kernels)} kernels for sm_{arch}, want {want}"
        )
    assert kernels, f"ptxas reported no kernel for {src.name}"
    print(f"\n{src.name} sm_{arch}: registers / stack / spill stores / spill loads")
    for k in kernels:
        print(
            f"  {k['registers']:4d} {k['stack']:4d} {k['spill_stores']:4d} {k['spill_loads']:4d}"
            f"  {_short_name(k['name'])}"
        )
    bad = [k for k in kernels if k["spill_stores"] or k["spill_loads"] or k["stack"]]
    assert not bad, f"kernels with spills or a stack frame: {bad}"


def test_parse_ptxas_reads_spills():
    # The parser itself, on a log in ptxas's format, so a spill cannot go unnoticed by a regex
    # that silently matches nothing.
    log = (
        "ptxas info    : Compiling entry function '_Z1kv' for 'sm_90'\n"
        "ptxas info    : Function properties for _Z1kv\n"
        "    16 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads\n"
        "ptxas info    : Used 255 registers, used 1 barriers, 16 bytes cumulative stack size\n"
    )
    assert parse_ptxas(log) == [
        {
            "name": "_Z1kv",
            "arch": "90",
            "stack": 16,
            "spill_stores": 8,
            "spill_loads": 4,
            "registers": 255,
        }
    ]


# ------------------------------------------------------------------------------------------------
# 2. cell_math.cuh on the host
# ------------------------------------------------------------------------------------------------

_CELL_SHIM = r"""
#include "cell_math.cuh"
using namespace fused_rnn::cuda;
extern "C" {
// pre (n, 4); gates (n, 4)
void lstm_fwd_n(int n, const double* pre, const double* c_prev, double* gates, double* c,
                double* h) {
  for (int e = 0; e < n; ++e) {
    LstmGates<double> g;
    lstm_unit_fwd(pre[4 * e], pre[4 * e + 1], pre[4 * e + 2], pre[4 * e + 3], c_prev[e], g, c[e],
                  h[e]);
    gates[4 * e] = g.i; gates[4 * e + 1] = g.f; gates[4 * e + 2] = g.g; gates[4 * e + 3] = g.o;
  }
}
// gates (n, 4); dpre (n, 4)
void lstm_bwd_n(int n, const double* gates, const double* c, const double* c_prev,
                const double* dh, const double* dc, double* dpre, double* dc_prev) {
  for (int e = 0; e < n; ++e) {
    const LstmGates<double> g{gates[4 * e], gates[4 * e + 1], gates[4 * e + 2], gates[4 * e + 3]};
    lstm_unit_bwd(g, c[e], c_prev[e], dh[e], dc[e], dpre[4 * e], dpre[4 * e + 1], dpre[4 * e + 2],
                  dpre[4 * e + 3], dc_prev[e]);
  }
}
// xp, hp, gates (n, 3)
void gru_fwd_n(int n, const double* xp, const double* hp, const double* h_prev, double* gates,
               double* h) {
  for (int e = 0; e < n; ++e) {
    GruGates<double> g;
    gru_unit_fwd(xp[3 * e], xp[3 * e + 1], xp[3 * e + 2], hp[3 * e], hp[3 * e + 1], hp[3 * e + 2],
                 h_prev[e], g, h[e]);
    gates[3 * e] = g.r; gates[3 * e + 1] = g.z; gates[3 * e + 2] = g.n;
  }
}
// gates, dxp (n, 3)
void gru_bwd_n(int n, const double* gates, const double* ghn, const double* h_prev,
               const double* dh, double* dxp, double* dhn_pre, double* dh_prev) {
  for (int e = 0; e < n; ++e) {
    const GruGates<double> g{gates[3 * e], gates[3 * e + 1], gates[3 * e + 2]};
    gru_unit_bwd(g, ghn[e], h_prev[e], dh[e], dxp[3 * e], dxp[3 * e + 1], dxp[3 * e + 2],
                 dhn_pre[e], dh_prev[e]);
  }
}
}
"""


@pytest.fixture(scope="module")
def cell_lib(tmp_path_factory):
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    d = tmp_path_factory.mktemp("cellmath")
    (d / "shim.cpp").write_text(_CELL_SHIM)
    so = d / "libcell.so"
    # -O2 without -ffast-math: the kernels keep IEEE semantics too.
    subprocess.run(
        [
            cxx,
            "-O2",
            "-std=c++17",
            "-shared",
            "-fPIC",
            f"-I{CUDA_SRC}",
            str(d / "shim.cpp"),
            "-o",
            str(so),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return ctypes.CDLL(str(so))


def _call(lib, fn, n, *arrays):
    ptr = ctypes.POINTER(ctypes.c_double)
    args = [a.ctypes.data_as(ptr) for a in arrays]
    getattr(lib, fn)(ctypes.c_int(n), *args)


def _rand(gen, *shape, scale=1.0):
    return torch.randn(*shape, generator=gen, dtype=torch.float64) * scale


def _np(t):
    return np.ascontiguousarray(t.detach().numpy())


@pytest.mark.parametrize("scale", [1.0, 30.0], ids=["moderate", "saturating"])
def test_lstm_cell_math_matches_autograd(cell_lib, scale):
    gen = torch.Generator().manual_seed(1)
    n = 257
    pre = _rand(gen, n, 4, scale=scale).requires_grad_()
    c_prev = _rand(gen, n, scale=scale).requires_grad_()
    dh, dc = _rand(gen, n), _rand(gen, n)
    i, f, g, o = (
        torch.sigmoid(pre[:, 0]),
        torch.sigmoid(pre[:, 1]),
        torch.tanh(pre[:, 2]),
        torch.sigmoid(pre[:, 3]),
    )
    c = f * c_prev + i * g
    h = o * torch.tanh(c)
    dpre_ref, dcp_ref = torch.autograd.grad((h * dh).sum() + (c * dc).sum(), [pre, c_prev])

    gates, c_out, h_out = np.zeros((n, 4)), np.zeros(n), np.zeros(n)
    _call(cell_lib, "lstm_fwd_n", n, _np(pre), _np(c_prev), gates, c_out, h_out)
    torch.testing.assert_close(torch.from_numpy(gates), torch.stack([i, f, g, o], 1).detach())
    torch.testing.assert_close(torch.from_numpy(c_out), c.detach())
    torch.testing.assert_close(torch.from_numpy(h_out), h.detach())

    dpre, dcp = np.zeros((n, 4)), np.zeros(n)
    _call(cell_lib, "lstm_bwd_n", n, gates, c_out, _np(c_prev), _np(dh), _np(dc), dpre, dcp)
    torch.testing.assert_close(torch.from_numpy(dpre), dpre_ref)
    torch.testing.assert_close(torch.from_numpy(dcp), dcp_ref)


@pytest.mark.parametrize("scale", [1.0, 30.0], ids=["moderate", "saturating"])
def test_gru_cell_math_matches_autograd(cell_lib, scale):
    gen = torch.Generator().manual_seed(2)
    n = 257
    xp = _rand(gen, n, 3, scale=scale).requires_grad_()
    hp = _rand(gen, n, 3, scale=scale).requires_grad_()
    h_prev = _rand(gen, n).requires_grad_()
    dh = _rand(gen, n)
    r = torch.sigmoid(xp[:, 0] + hp[:, 0])
    z = torch.sigmoid(xp[:, 1] + hp[:, 1])
    nn_ = torch.tanh(xp[:, 2] + r * hp[:, 2])
    h = (1 - z) * nn_ + z * h_prev
    dxp_ref, dhp_ref, dhprev_ref = torch.autograd.grad((h * dh).sum(), [xp, hp, h_prev])

    gates, h_out = np.zeros((n, 3)), np.zeros(n)
    _call(cell_lib, "gru_fwd_n", n, _np(xp), _np(hp), _np(h_prev), gates, h_out)
    torch.testing.assert_close(torch.from_numpy(gates), torch.stack([r, z, nn_], 1).detach())
    torch.testing.assert_close(torch.from_numpy(h_out), h.detach())

    ghn = _np(hp[:, 2])
    dxp, dhn, dhp = np.zeros((n, 3)), np.zeros(n), np.zeros(n)
    _call(cell_lib, "gru_bwd_n", n, gates, ghn, _np(h_prev), _np(dh), dxp, dhn, dhp)
    torch.testing.assert_close(torch.from_numpy(dxp), dxp_ref)
    # Hidden-side gradients: r and z equal the input side's, n is separate (it is scaled by r).
    torch.testing.assert_close(dhp_ref[:, :2], dxp_ref[:, :2])
    torch.testing.assert_close(torch.from_numpy(dhn), dhp_ref[:, 2])
    torch.testing.assert_close(torch.from_numpy(dhp), dhprev_ref)


def test_cell_math_propagates_nan(cell_lib):
    pre = np.array([[np.nan, 0.0, 0.0, 0.0]])
    gates, c, h = np.zeros((1, 4)), np.zeros(1), np.zeros(1)
    _call(cell_lib, "lstm_fwd_n", 1, pre, np.zeros(1), gates, c, h)
    assert np.isnan(gates[0, 0]) and np.isnan(c[0]) and np.isnan(h[0])


# ------------------------------------------------------------------------------------------------
# 3. The general path, emulated on the host
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def emu():
    """torch.ops.fused_rnn_cuda_emu: bindings.cpp built for the CPU with the element functions
    run on the host. The shared argument checks it calls live in fused_rnn._C (csrc/ops.cpp),
    which is made globally visible so the emulation library resolves them from there."""
    try:
        import fused_rnn._C as ext
    except ImportError as e:
        pytest.skip(
            f"needs the CPU build of fused_rnn._C ({e}): pip install --no-build-isolation -e ."
        )
    # Only the shared checks are used from it: it must be newer than their sources.
    newer = [
        f
        for f in ("csrc/ops.cpp", "csrc/fused_rnn.h")
        if os.path.getmtime(ROOT / f) > os.path.getmtime(ext.__file__)
    ]
    if newer:
        pytest.skip(f"fused_rnn._C is older than {newer}: pip install --no-build-isolation -e .")

    # Promote the already loaded extension to RTLD_GLOBAL (RTLD_NOLOAD: do not load it again).
    ctypes.CDLL(ext.__file__, mode=os.RTLD_NOW | os.RTLD_GLOBAL | os.RTLD_NOLOAD)
    from torch.utils import cpp_extension

    build = ROOT / "build" / "cuda_emu"
    build.mkdir(parents=True, exist_ok=True)
    cpp_extension.load(
        name="fused_rnn_cuda_emu",
        sources=[
            str(CUDA_SRC / "bindings.cpp"),
            str(CUDA_SRC / "emulation" / "host_launchers.cpp"),
        ],
        extra_cflags=["-O1", "-g0", "-DFUSED_RNN_CUDA_EMULATE"],
        build_directory=str(build),
        is_python_module=False,
        verbose=False,
    )
    return torch.ops.fused_rnn_cuda_emu


CASES = [
    # T, B, I, H, bias, lengths (None = all T), dtype
    pytest.param(7, 3, 5, 6, True, [7, 3, 1], torch.float64, id="T7-B3-I5-H6-len-f64"),
    pytest.param(5, 2, 4, 3, False, None, torch.float64, id="T5-B2-I4-H3-nobias-f64"),
    pytest.param(1, 1, 2, 5, True, None, torch.float64, id="T1-B1-I2-H5-f64"),
    pytest.param(6, 4, 8, 16, True, [2, 6, 5, 1], torch.float32, id="T6-B4-I8-H16-len-f32"),
]
TOL = {torch.float64: dict(atol=1e-10, rtol=1e-10), torch.float32: dict(atol=1e-5, rtol=1e-5)}


def _reference(cell, x, h0, c0, params, lengths, dy, dhn, dcn):
    """nn.LSTM / nn.GRU in float64 on packed sequences: outputs, final states and the gradients
    of <y, dy> + <hn, dhn> (+ <cn, dcn>) w.r.t. x, h0, c0 and params (in module order)."""
    T, B, I = x.shape  # noqa: E741 - the dimension's name
    H = h0.shape[1]
    mod_cls = torch.nn.LSTM if cell == "lstm" else torch.nn.GRU
    mod = mod_cls(I, H, bias=len(params) == 4).double()
    with torch.no_grad():
        for p, v in zip(mod.parameters(), params):
            p.copy_(v.double())
    x = x.double().detach().requires_grad_()
    h0 = h0.double().detach().requires_grad_()
    state = h0[None]
    inputs = [x, h0]
    if cell == "lstm":
        c0 = c0.double().detach().requires_grad_()
        state = (h0[None], c0[None])
        inputs.append(c0)
    seq = x if lengths is None else pack_padded_sequence(x, lengths, enforce_sorted=False)
    out, st = mod(seq, state)
    y = out if lengths is None else pad_packed_sequence(out, total_length=T)[0]
    if cell == "lstm":
        hn, cn = st[0][0], st[1][0]
        loss = (y * dy.double()).sum() + (hn * dhn.double()).sum() + (cn * dcn.double()).sum()
        outs = (y, hn, cn)
    else:
        hn = st[0]
        loss = (y * dy.double()).sum() + (hn * dhn.double()).sum()
        outs = (y, hn)
    grads = torch.autograd.grad(loss, inputs + list(mod.parameters()))
    return [o.detach() for o in outs], grads


def _inputs(cell, T, B, I, H, bias, dtype, seed):  # noqa: E741
    gen = torch.Generator().manual_seed(seed)
    G = 4 if cell == "lstm" else 3

    def r(*s, scale=1.0):
        return (torch.randn(*s, generator=gen, dtype=torch.float64) * scale).to(dtype)

    k = H**-0.5
    params = [r(G * H, I, scale=k), r(G * H, H, scale=k)]
    if bias:
        params += [r(G * H, scale=k), r(G * H, scale=k)]
    return r(T, B, I), r(B, H), r(B, H), params, r(T, B, H), r(B, H), r(B, H)


def _assert_close(got, want, dtype, what):
    torch.testing.assert_close(
        got.double(), want.double(), **TOL[dtype], msg=lambda m: f"{what}: {m}"
    )


@pytest.mark.parametrize("T,B,I,H,bias,lens,dtype", CASES)
def test_emulated_lstm_matches_torch(emu, T, B, I, H, bias, lens, dtype):  # noqa: E741
    x, h0, c0, params, dy, dhn, dcn = _inputs("lstm", T, B, I, H, bias, dtype, seed=T * 100 + H)
    lengths = None if lens is None else torch.tensor(lens, dtype=torch.int64)
    w_ih, w_hh = params[:2]
    b_ih, b_hh = (params[2], params[3]) if bias else (None, None)
    y, hn, cn, gates, cs = emu.lstm_fwd(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, True)
    (y_r, hn_r, cn_r), grads = _reference("lstm", x, h0, c0, params, lens, dy, dhn, dcn)
    _assert_close(y, y_r, dtype, "y")
    _assert_close(hn, hn_r, dtype, "hn")
    _assert_close(cn, cn_r, dtype, "cn")
    assert gates.shape == (T, B, 4 * H) and cs.shape == (T, B, H)

    # Inference: same outputs, nothing saved.
    y2, hn2, cn2, g2, cs2 = emu.lstm_fwd(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, False)
    assert g2.numel() == 0 and cs2.numel() == 0
    torch.testing.assert_close(y2, y, atol=0, rtol=0)
    torch.testing.assert_close(hn2, hn, atol=0, rtol=0)
    torch.testing.assert_close(cn2, cn, atol=0, rtol=0)

    # dy is nonzero at padded steps too: the op must ignore it there.
    dx, dh0, dc0, dw_ih, dw_hh, db = emu.lstm_bwd(
        x, h0, c0, w_ih, w_hh, y, gates, cs, lengths, dy, dhn, dcn
    )
    names = ["dx", "dh0", "dc0", "dw_ih", "dw_hh"]
    for name, got, want in zip(names, [dx, dh0, dc0, dw_ih, dw_hh], grads):
        _assert_close(got, want, dtype, name)
    if bias:
        _assert_close(db, grads[5], dtype, "db vs b_ih.grad")
        _assert_close(db, grads[6], dtype, "db vs b_hh.grad")


@pytest.mark.parametrize("T,B,I,H,bias,lens,dtype", CASES)
def test_emulated_gru_matches_torch(emu, T, B, I, H, bias, lens, dtype):  # noqa: E741
    x, h0, _, params, dy, dhn, _ = _inputs("gru", T, B, I, H, bias, dtype, seed=T * 100 + H + 1)
    lengths = None if lens is None else torch.tensor(lens, dtype=torch.int64)
    w_ih, w_hh = params[:2]
    b_ih, b_hh = (params[2], params[3]) if bias else (None, None)
    y, hn, gates, ghn = emu.gru_fwd(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, True)
    (y_r, hn_r), grads = _reference("gru", x, h0, None, params, lens, dy, dhn, None)
    _assert_close(y, y_r, dtype, "y")
    _assert_close(hn, hn_r, dtype, "hn")
    assert gates.shape == (T, B, 3 * H) and ghn.shape == (T, B, H)

    y2, hn2, g2, ghn2 = emu.gru_fwd(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, False)
    assert g2.numel() == 0 and ghn2.numel() == 0
    torch.testing.assert_close(y2, y, atol=0, rtol=0)
    torch.testing.assert_close(hn2, hn, atol=0, rtol=0)

    dx, dh0, dw_ih, dw_hh, db_ih, db_hh = emu.gru_bwd(
        x, h0, w_ih, w_hh, y, gates, ghn, lengths, dy, dhn
    )
    for name, got, want in zip(["dx", "dh0", "dw_ih", "dw_hh"], [dx, dh0, dw_ih, dw_hh], grads):
        _assert_close(got, want, dtype, name)
    if bias:
        _assert_close(db_ih, grads[4], dtype, "db_ih")
        _assert_close(db_hh, grads[5], dtype, "db_hh")


def test_emulated_ops_reject_bad_input(emu, monkeypatch):
    x, h0, c0, params, dy, dhn, dcn = _inputs("lstm", 3, 2, 4, 5, True, torch.float32, seed=0)
    w_ih, w_hh, b_ih, b_hh = params
    with pytest.raises(RuntimeError, match="w_hh"):
        emu.lstm_fwd(x, h0, c0, w_ih, w_hh[:, :4], b_ih, b_hh, None, True)
    with pytest.raises(RuntimeError, match="need_saved=True"):
        empty = torch.empty(0)
        emu.lstm_bwd(x, h0, c0, w_ih, w_hh, x.new_zeros(3, 2, 5), empty, empty, None, dy, dhn, dcn)
    monkeypatch.setenv("FUSED_RNN_CUDA_PATH", "persistent")
    with pytest.raises(RuntimeError, match="not emulated"):
        emu.lstm_fwd(x, h0, c0, w_ih, w_hh, b_ih, b_hh, None, True)
    monkeypatch.setenv("FUSED_RNN_CUDA_PATH", "fastest")
    with pytest.raises(RuntimeError, match="auto, general or persistent"):
        emu.lstm_fwd(x, h0, c0, w_ih, w_hh, b_ih, b_hh, None, True)
    monkeypatch.setenv("FUSED_RNN_CUDA_PATH", "general")
    y, _, _, gates, cs = emu.lstm_fwd(x, h0, c0, w_ih, w_hh, b_ih, b_hh, None, True)
    for value, message in [("persistent", "not emulated"), ("fast", "general or persistent")]:
        monkeypatch.setenv("FUSED_RNN_CUDA_BWD", value)
        with pytest.raises(RuntimeError, match=message):
            emu.lstm_bwd(x, h0, c0, w_ih, w_hh, y, gates, cs, None, dy, dhn, dcn)


# ------------------------------------------------------------------------------------------------
# 3b. The real (CUDA) bindings.cpp, syntax-checked against the CPU torch's headers
# ------------------------------------------------------------------------------------------------

# The CPU torch wheel ships ATen/cuda headers but not the cuBLAS / cuSPARSE / cuSOLVER headers
# they include, nor a generated c10 macro header. These stand-ins declare just the names those
# torch headers use; bindings.cpp itself uses none of them (its GEMMs go through at::mm).
_CUDA_HEADER_STUBS = {
    "c10/cuda/impl/cuda_cmake_macros.h": "#define C10_CUDA_BUILD_SHARED_LIBS\n",
    "cublas_v2.h": "typedef struct cublasContext* cublasHandle_t;\n"
    "typedef enum { CUBLAS_STATUS_SUCCESS = 0 } cublasStatus_t;\n",
    "cublasLt.h": "typedef struct cublasLtContext* cublasLtHandle_t;\n",
    "cusparse.h": "typedef struct cusparseContext* cusparseHandle_t;\n"
    "typedef enum { CUSPARSE_STATUS_SUCCESS = 0 } cusparseStatus_t;\n"
    "const char* cusparseGetErrorString(cusparseStatus_t);\n",
    "cusolverDn.h": "typedef struct cusolverDnContext* cusolverDnHandle_t;\n",
    "cusolver_common.h": "typedef enum { CUSOLVER_STATUS_SUCCESS = 0,\n"
    "  CUSOLVER_STATUS_INVALID_VALUE = 3 } cusolverStatus_t;\n",
}


def test_cuda_bindings_syntax(tmp_path):
    """g++ -fsyntax-only of bindings.cpp as the GPU build compiles it (no emulation macro): the
    CUDA stream / guard / at::mm(out_dtype) calls exist with these signatures. A content hash of
    the inputs is stamped after a clean check, so an unchanged file is not re-checked (~35 s)."""
    import hashlib

    from torch.utils import cpp_extension

    cxx = shutil.which("g++")
    homes = [os.environ.get("CUDA_HOME"), cpp_extension.CUDA_HOME, "/usr/local/cuda"]
    incs = [Path(h) / "include" for h in homes if h]
    cuda_inc = next((p for p in incs if (p / "cuda_runtime_api.h").exists()), None)
    if cxx is None or cuda_inc is None:
        pytest.skip("needs g++ and the CUDA toolkit headers (cuda_runtime_api.h)")
    inputs = [CUDA_SRC / "bindings.cpp", CUDA_SRC / "launchers.h", ROOT / "csrc" / "fused_rnn.h"]
    digest = hashlib.sha256(torch.__version__.encode())
    for f in inputs:
        digest.update(f.read_bytes())
    stamp = ROOT / "build" / "cuda_emu" / f"bindings_syntax_{digest.hexdigest()[:16]}.ok"
    if stamp.exists():
        return
    for name, text in _CUDA_HEADER_STUBS.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("#pragma once\n" + text)
    incs = [f"-I{p}" for p in cpp_extension.include_paths()]
    cmd = [
        cxx,
        "-std=c++17",
        "-fsyntax-only",
        "-Wall",
        "-Wextra",
        f"-I{tmp_path}",
        f"-I{cuda_inc}",
        *incs,
        str(CUDA_SRC / "bindings.cpp"),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-5000:]
    # Warnings in our own files count as failures; torch's own headers warn under -Wextra.
    ours = [ln for ln in r.stderr.splitlines() if "csrc/" in ln and "warning" in ln]
    assert not ours, "\n".join(ours)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(" ".join(cmd))


# ------------------------------------------------------------------------------------------------
# 4. On a GPU: the persistent and the general forward
# ------------------------------------------------------------------------------------------------

GPU_TOL = {
    torch.float32: dict(atol=2e-5, rtol=2e-5),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=1.6e-2, rtol=1.6e-2),
}
GPU_CASES = [
    # T, B, I, H, lengths
    pytest.param(9, 5, 12, 64, [9, 4, 1, 7, 9], id="T9-B5-I12-H64-len"),
    pytest.param(4, 3, 8, 132, None, id="T4-B3-I8-H132"),
    # B=200 at H=1024 fp32 does not fit in one shared-memory chunk: the batch is chunked.
    pytest.param(3, 200, 16, 1024, None, id="T3-B200-I16-H1024-chunked"),
]


def _cuda_ops():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from fused_rnn.ops import load_library

    why = load_library()
    if why is not None:
        pytest.skip(why)
    if not torch._C._dispatch_has_kernel_for_dispatch_key("fused_rnn::lstm_fwd", "CUDA"):
        pytest.fail("fused_rnn._C has no CUDA kernels on a machine with CUDA: rebuild it")
    return torch.ops.fused_rnn


@pytest.mark.gpu
@pytest.mark.parametrize("mma", ["0", "1"], ids=["cuda-cores", "tensor-cores"])
@pytest.mark.parametrize("dtype", list(GPU_TOL), ids=str)
@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("T,B,I,H,lens", GPU_CASES)
def test_gpu_persistent_and_general_agree(monkeypatch, cell, dtype, mma, T, B, I, H, lens):  # noqa: E741
    """Forward of both paths, the general backward fed with each path's saved activations and
    the persistent backward: all agree with each other, and with float64 nn.LSTM / nn.GRU
    (gradients: float32 only; the half-precision gradients are judged by the parity suite's
    2x-of-torch criterion)."""
    ops = _cuda_ops()
    if mma == "1" and dtype == torch.float32:
        pytest.skip("the tensor-core variant is for float16 / bfloat16 only")
    monkeypatch.setenv("FUSED_RNN_CUDA_MMA", mma)  # H % 16 != 0 runs the CUDA-core variant
    x, h0, c0, params, dy, dhn, dcn = _inputs(cell, T, B, I, H, True, torch.float64, seed=H + B)
    xg, h0g, c0g, w_ih, w_hh, b_ih, b_hh, dyg, dhng, dcng = [
        t.to("cuda", dtype) for t in (x, h0, c0, *params, dy, dhn, dcn)
    ]
    lengths = None if lens is None else torch.tensor(lens, dtype=torch.int64, device="cuda")
    fwd, grads = {}, {}
    for path in ("general", "persistent"):
        monkeypatch.setenv("FUSED_RNN_CUDA_PATH", path)
        if cell == "lstm":
            out = ops.lstm_fwd(xg, h0g, c0g, w_ih, w_hh, b_ih, b_hh, lengths, True)
            y, _, _, gates, cs = out
            g = ops.lstm_bwd(xg, h0g, c0g, w_ih, w_hh, y, gates, cs, lengths, dyg, dhng, dcng)
        else:
            out = ops.gru_fwd(xg, h0g, w_ih, w_hh, b_ih, b_hh, lengths, True)
            y, _, gates, ghn = out
            g = ops.gru_bwd(xg, h0g, w_ih, w_hh, y, gates, ghn, lengths, dyg, dhng)
        fwd[path], grads[path] = out, g
    # The persistent backward (opt-in), fed with the general forward's saved activations. It
    # may not fit (LSTM fp32 at H=1024: W_hh columns + 8 rows of dgh exceed shared memory).
    monkeypatch.setenv("FUSED_RNN_CUDA_BWD", "persistent")
    y, *_ = fwd["general"]
    try:
        if cell == "lstm":
            _, _, _, gates, cs = fwd["general"]
            g_pb = ops.lstm_bwd(xg, h0g, c0g, w_ih, w_hh, y, gates, cs, lengths, dyg, dhng, dcng)
        else:
            _, _, gates, ghn = fwd["general"]
            g_pb = ops.gru_bwd(xg, h0g, w_ih, w_hh, y, gates, ghn, lengths, dyg, dhng)
    except RuntimeError as e:
        if "cannot run this case" not in str(e):
            raise
        g_pb = ()
    monkeypatch.setenv("FUSED_RNN_CUDA_BWD", "general")
    torch.cuda.synchronize()
    tol = GPU_TOL[dtype]
    # The two paths: same inputs, fp32 state; only the order of the recurrent sums differs.
    for a, b in zip(fwd["general"] + grads["general"], fwd["persistent"] + grads["persistent"]):
        torch.testing.assert_close(b.float(), a.float(), **tol)
    for a, b in zip(grads["general"], g_pb):  # persistent backward vs general backward
        torch.testing.assert_close(b.float(), a.float(), **tol)
    # Against float64 on the CPU, from the same (dtype-rounded) inputs.
    cpu = [t.double().cpu() for t in (xg, h0g, c0g, w_ih, w_hh, b_ih, b_hh, dyg, dhng, dcng)]
    outs_r, grads_r = _reference(cell, *cpu[:3], cpu[3:7], lens, *cpu[7:])
    for path in fwd:
        for got, want in zip(fwd[path], outs_r):  # y, hn (, cn)
            torch.testing.assert_close(
                got.double().cpu(), want, **tol, msg=lambda m, p=path: f"{p}: {m}"
            )
    if dtype == torch.float32:
        n = 5 if cell == "lstm" else 4  # dx, dh0, (dc0,) dw_ih, dw_hh
        for got, want in zip(grads["general"][:n], grads_r[: n - 2] + grads_r[-4:-2]):
            torch.testing.assert_close(got.double().cpu(), want, atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
def test_gpu_persistent_refuses_odd_hidden(monkeypatch):
    ops = _cuda_ops()
    x, h0, c0, params, *_ = _inputs("lstm", 3, 2, 4, 6, True, torch.float32, seed=0)
    args = [t.cuda() for t in (x, h0, c0, *params)]
    monkeypatch.setenv("FUSED_RNN_CUDA_PATH", "persistent")
    with pytest.raises(RuntimeError, match="multiple of 4"):
        ops.lstm_fwd(*args, None, False)
    monkeypatch.setenv("FUSED_RNN_CUDA_PATH", "auto")  # falls back to the general path
    y, *_ = ops.lstm_fwd(*args, None, False)
    assert torch.isfinite(y).all()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v", "-s"]))
