"""The compiled backends "cpp" (CPU) and "cuda" over the ops of fused_rnn._C.

The extension declares four ops (csrc/ops.cpp) and implements them per device (csrc/cpu/,
csrc/cuda/). One layer, one direction, time-major. Dimension legend: T steps, B batch, I input,
H hidden; "acc" is float32 for float16 / bfloat16 inputs, else x's dtype.

``torch.ops.fused_rnn.lstm_fwd(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, need_saved)``
    x (T, B, I); h0, c0 (B, H); w_ih (4H, I); w_hh (4H, H); b_ih, b_hh (4H,) or None;
    lengths int64 (B,) or None -> y (T, B, H), hn (B, H), cn (B, H), gates (T, B, 4H) acc
    (post-activation i, f, g, o), cs (T, B, H) acc (cell state after each step); gates and cs
    are empty when need_saved is False.
``torch.ops.fused_rnn.lstm_bwd(x, h0, c0, w_ih, w_hh, y, gates, cs, lengths, dy, dhn, dcn)``
    -> dx (T, B, I), dh0 (B, H), dc0 (B, H), dw_ih (4H, I), dw_hh (4H, H), db (4H,)
``torch.ops.fused_rnn.gru_fwd(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, need_saved)``
    G = 3 -> y (T, B, H), hn (B, H), gates (T, B, 3H) acc (r, z, n), ghn (T, B, H) acc
    (W_hn h_prev + b_hn of each step).
``torch.ops.fused_rnn.gru_bwd(x, h0, w_ih, w_hh, y, gates, ghn, lengths, dy, dhn)``
    -> dx, dh0, dw_ih (3H, I), dw_hh (3H, H), db_ih (3H,), db_hh (3H,)

This module wraps them as backend-contract objects (see fused_rnn.backends): ``CppBackend``
and ``CudaBackend`` are one class, ``CompiledBackend``, parametrised by device. It registers fake
kernels so that torch.compile(fullgraph=True) traces the ops without a graph break. Importing it
does not load the extension; ``available()`` does, and says how to rebuild when it is missing or
older than its sources.
"""

from __future__ import annotations

import functools
import glob
import os

import torch
from torch import Tensor

__all__ = ["CompiledBackend", "CppBackend", "CudaBackend", "load_library", "torch_mismatch"]

REBUILD = "rebuild with: pip install --no-build-isolation -e ."
# For an installed (non-editable) package: rebuild from its source against the torch in use.
REINSTALL = (
    "pip install --no-build-isolation --no-deps --force-reinstall <fused_rnn source dir or sdist>"
)

# The schemas this Python side was written for; a library declaring others is stale.
SCHEMAS = {
    "lstm_fwd": "fused_rnn::lstm_fwd(Tensor x, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, "
    "Tensor? b_ih, Tensor? b_hh, Tensor? lengths, bool need_saved) -> (Tensor y, Tensor hn, "
    "Tensor cn, Tensor gates, Tensor cs)",
    "lstm_bwd": "fused_rnn::lstm_bwd(Tensor x, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, "
    "Tensor y, Tensor gates, Tensor cs, Tensor? lengths, Tensor dy, Tensor dhn, Tensor dcn) -> "
    "(Tensor dx, Tensor dh0, Tensor dc0, Tensor dw_ih, Tensor dw_hh, Tensor db)",
    "gru_fwd": "fused_rnn::gru_fwd(Tensor x, Tensor h0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
    "Tensor? b_hh, Tensor? lengths, bool need_saved) -> (Tensor y, Tensor hn, Tensor gates, "
    "Tensor ghn)",
    "gru_bwd": "fused_rnn::gru_bwd(Tensor x, Tensor h0, Tensor w_ih, Tensor w_hh, Tensor y, "
    "Tensor gates, Tensor ghn, Tensor? lengths, Tensor dy, Tensor dhn) -> (Tensor dx, Tensor dh0, "
    "Tensor dw_ih, Tensor dw_hh, Tensor db_ih, Tensor db_hh)",
}

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _stale_sources(lib_path: str) -> list[str]:
    """Sources in a source checkout (editable install) newer than the built library. Only the
    sources that were compiled in count: the CUDA ones only where torch has CUDA."""
    csrc = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc")
    if not os.path.isdir(csrc):  # an installed wheel: nothing to compare against
        return []
    patterns = ["*.h", "*.cpp", "cpu/*.h", "cpu/*.cpp"]
    if torch.version.cuda is not None:
        patterns += ["cuda/*.h", "cuda/*.cuh", "cuda/*.cu", "cuda/*.cpp"]
    built = os.path.getmtime(lib_path)
    return sorted(
        os.path.relpath(p, os.path.dirname(csrc))
        for pat in patterns
        for p in glob.glob(os.path.join(csrc, pat))
        if os.path.getmtime(p) > built
    )


def torch_mismatch() -> str | None:
    """None unless fused_rnn._C was built against another torch than the one imported (C++
    extensions are tied to one torch build: loading it anyway fails with undefined symbols or
    worse). Reads the stamp setup.py writes at build time (fused_rnn/_build_info.py) and does not
    load the library."""
    try:
        from ._build_info import TORCH_VERSION
    except ImportError:  # built before the stamp existed, or not built: the import will tell
        return None
    if TORCH_VERSION == torch.__version__:
        return None
    return (
        f"fused_rnn._C was built against torch {TORCH_VERSION} but torch {torch.__version__} is "
        f"installed; {REBUILD} (source checkout) or {REINSTALL}"
    )


@functools.cache
def load_library() -> str | None:
    """Load fused_rnn._C and register the fake kernels, once. None when the ops are usable, else
    why not and how to fix it."""
    if os.environ.get("FUSED_RNN_NO_EXT", "") == "1":
        return f"disabled by FUSED_RNN_NO_EXT=1; unset it and {REBUILD}"
    mismatch = torch_mismatch()
    if mismatch is not None:  # checked first: loading it would fail with undefined symbols
        return mismatch
    try:
        from . import _C
    except ImportError as e:
        return (
            f"the compiled extension fused_rnn._C is missing or does not load ({e}; torch "
            f"{torch.__version__} is installed); {REBUILD}"
        )
    for name, schema in SCHEMAS.items():
        op = getattr(torch.ops.fused_rnn, name, None)
        if op is None or str(op.default._schema) != schema:
            return f"fused_rnn._C is stale (op {name} missing or with another schema); {REBUILD}"
    newer = _stale_sources(_C.__file__)
    if newer:
        return f"fused_rnn._C is older than {', '.join(newer[:3])}; {REBUILD}"
    _register_fakes()
    return None


# ----------------------------------------------------------------------------- fake kernels
def _saved(x: Tensor, need: bool, *shape: int) -> Tensor:
    return x.new_empty(shape if need else (0,), dtype=_acc(x.dtype))


def _lstm_fwd_fake(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, need_saved):
    T, B, _ = x.shape
    H = w_hh.shape[1]
    return (
        x.new_empty(T, B, H),
        x.new_empty(B, H),
        x.new_empty(B, H),
        _saved(x, need_saved, T, B, 4 * H),
        _saved(x, need_saved, T, B, H),
    )


def _lstm_bwd_fake(x, h0, c0, w_ih, w_hh, y, gates, cs, lengths, dy, dhn, dcn):
    return (
        torch.empty_like(x),
        torch.empty_like(h0),
        torch.empty_like(c0),
        torch.empty_like(w_ih),
        torch.empty_like(w_hh),
        w_ih.new_empty(w_ih.shape[0]),
    )


def _gru_fwd_fake(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, need_saved):
    T, B, _ = x.shape
    H = w_hh.shape[1]
    return (
        x.new_empty(T, B, H),
        x.new_empty(B, H),
        _saved(x, need_saved, T, B, 3 * H),
        _saved(x, need_saved, T, B, H),
    )


def _gru_bwd_fake(x, h0, w_ih, w_hh, y, gates, ghn, lengths, dy, dhn):
    return (
        torch.empty_like(x),
        torch.empty_like(h0),
        torch.empty_like(w_ih),
        torch.empty_like(w_hh),
        w_ih.new_empty(w_ih.shape[0]),
        w_ih.new_empty(w_ih.shape[0]),
    )


def _register_fakes() -> None:
    for name, fn in (
        ("lstm_fwd", _lstm_fwd_fake),
        ("lstm_bwd", _lstm_bwd_fake),
        ("gru_fwd", _gru_fwd_fake),
        ("gru_bwd", _gru_bwd_fake),
    ):
        torch.library.register_fake(f"fused_rnn::{name}", fn)


# ------------------------------------------------------------------------------ the backend
def _status(device: str) -> str | None:
    """None when the compiled ops run on `device` ("cpu" / "cuda") here, else why not."""
    why = load_library()
    if why is not None:
        return why
    if not torch._C._dispatch_has_kernel_for_dispatch_key("fused_rnn::lstm_fwd", device.upper()):
        return (
            f"fused_rnn._C was built without {device.upper()} kernels (it needs torch with CUDA "
            f"and nvcc at build time; torch.version.cuda={torch.version.cuda}); {REBUILD}"
        )
    if device == "cuda" and not torch.cuda.is_available():
        return "no CUDA device is available"
    return None


# A constant for torch.compile: the modules ask for it inside forward, and tracing into the
# import and file checks would break the graph. This is what torch.compiler.assume_constant_result
# does, without its import of torch._dynamo (seconds) when fused_rnn.ops is imported; the compile
# test in tests/test_ops.py fails if torch stops honouring it.
_status._dynamo_marked_constant = True


def _c(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.contiguous()


class CompiledBackend:
    """The backend contract (fused_rnn.backends) on torch.ops.fused_rnn.* for one device type.

    No projection (proj_size > 0): ``supports`` declines it, so "auto" falls back to the
    reference backend there.
    """

    name: str = "compiled"
    device: str = ""

    def available(self) -> str | None:
        return _status(self.device)

    def supports(self, cell: str, x: Tensor, has_proj: bool) -> str | None:
        if cell not in ("lstm", "gru"):
            return f"unknown cell {cell!r}"
        if has_proj:
            return "proj_size > 0 (LSTM projection) is not implemented by the compiled ops"
        if x.device.type != self.device:
            return f"input is on {x.device.type}, this backend runs on {self.device}"
        if x.dtype not in _DTYPES:
            return f"dtype {x.dtype} is not supported (float16, bfloat16, float32, float64 are)"
        return None

    def lstm_fwd(self, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, need_saved):
        if w_hr is not None:
            raise ValueError(f"backend {self.name!r}: proj_size > 0 is not supported")
        args = [_c(t) for t in (x, h0, c0, w_ih, w_hh)]
        y, hn, cn, gates, cs = torch.ops.fused_rnn.lstm_fwd(
            *args, _c(b_ih), _c(b_hh), lengths, need_saved
        )
        saved = (*args, y, gates, cs, lengths) if need_saved else ()
        return y, hn, cn, saved

    def lstm_bwd(self, saved, dy, dhn, dcn):
        dx, dh0, dc0, dw_ih, dw_hh, db = torch.ops.fused_rnn.lstm_bwd(
            *saved, _c(dy), _c(dhn), _c(dcn)
        )
        # b_ih and b_hh have the same gradient; separate tensors so the two .grad never alias.
        return dx, dh0, dc0, dw_ih, dw_hh, db, db.clone(), None

    def gru_fwd(self, x, h0, w_ih, w_hh, b_ih, b_hh, lengths, need_saved):
        args = [_c(t) for t in (x, h0, w_ih, w_hh)]
        y, hn, gates, ghn = torch.ops.fused_rnn.gru_fwd(
            *args, _c(b_ih), _c(b_hh), lengths, need_saved
        )
        saved = (*args, y, gates, ghn, lengths) if need_saved else ()
        return y, hn, saved

    def gru_bwd(self, saved, dy, dhn):
        return torch.ops.fused_rnn.gru_bwd(*saved, _c(dy), _c(dhn))


class CppBackend(CompiledBackend):
    """The fused C++ CPU kernels (csrc/cpu/)."""

    name = "cpp"
    device = "cpu"


class CudaBackend(CompiledBackend):
    """The CUDA kernels (csrc/cuda/)."""

    name = "cuda"
    device = "cuda"
