"""The compiled backends "cpp" (CPU) and "cuda" over the ops of fused_rnn._C.

The extension declares six ops (the one list is ``kSchemas`` in csrc/ops.cpp) and implements
them per device (csrc/cpu/, csrc/cuda/). One layer, one direction, time-major. Dimension legend:
T steps, B batch, I input, H hidden, P size of h (LSTM proj_size when it projects, else H); "acc"
is float32 for float16 / bfloat16 inputs, else x's dtype.

``torch.ops.fused_rnn.lstm_fwd(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, need_saved)``
    x (T, B, I); h0 (B, P); c0 (B, H); w_ih (4H, I); w_hh (4H, P); b_ih, b_hh (4H,) or None;
    w_hr (P, H) or None; lengths int64 (B,) or None -> y (T, B, P), hn (B, P), cn (B, H),
    gates (T, B, 4H) acc (post-activation i, f, g, o), cs (T, B, H) acc (cell state after each
    step); gates and cs are empty when need_saved is False.
``torch.ops.fused_rnn.lstm_bwd(x, h0, c0, w_ih, w_hh, w_hr, y, gates, cs, lengths, dy, dhn, dcn)``
    -> dx (T, B, I), dh0 (B, P), dc0 (B, H), dw_ih (4H, I), dw_hh (4H, P), db (4H,),
    dw_hr (P, H) (empty (0,) when w_hr is None)
``torch.ops.fused_rnn.gru_fwd(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, need_saved)``
    G = 3 -> y (T, B, H), hn (B, H), gates (T, B, 3H) acc (r, z, n), ghn (T, B, H) acc
    (W_hn h_prev + b_hn of each step).
``torch.ops.fused_rnn.gru_bwd(x, h0, w_ih, w_hh, y, gates, ghn, lengths, dy, dhn)``
    -> dx, dh0, dw_ih (3H, I), dw_hh (3H, H), db_ih (3H,), db_hh (3H,)
``torch.ops.fused_rnn.rnn_fwd(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, relu, need_saved)``
    G = 1, act = relu if relu else tanh -> y (T, B, H), hn (B, H) (y is all backward needs).
``torch.ops.fused_rnn.rnn_bwd(x, h0, w_ih, w_hh, y, lengths, relu, dy, dhn)``
    -> dx, dh0, dw_ih (H, I), dw_hh (H, H), db (H,) (the gradient of b_ih and of b_hh alike)

This module wraps them as backend-contract objects (see fused_rnn.backends): ``CppBackend``
and ``CudaBackend`` are one class, ``CompiledBackend``, parametrised by device. It registers fake
kernels so that torch.compile(fullgraph=True) traces the ops without a graph break; the fake
kernels are also this side's statement of the schemas: a library whose ops have other argument
or output names is stale. Importing it does not load the extension; ``available()`` does, and
says how to rebuild when it is missing or older than its sources.
"""

from __future__ import annotations

import functools
import glob
import inspect
import os

import torch
from torch import Tensor

from .cells import CELLS, Cell

__all__ = ["CompiledBackend", "CppBackend", "CudaBackend", "load_library", "torch_mismatch"]

REBUILD = "rebuild with: pip install --no-build-isolation -e ."
# For an installed (non-editable) package: rebuild from its source against the torch in use.
REINSTALL = (
    "pip install --no-build-isolation --no-deps --force-reinstall <fused_rnn source dir or sdist>"
)

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
    for name, fake in _FAKES.items():
        why = _schema_mismatch(name, fake)
        if why is not None:
            return f"fused_rnn._C is stale ({why}); {REBUILD}"
    newer = _stale_sources(_C.__file__)
    if newer:
        return f"fused_rnn._C is older than {', '.join(newer[:3])}; {REBUILD}"
    _register_fakes()
    return None


def _schema_mismatch(name: str, fake) -> str | None:
    """None when the library's op `name` takes the fake kernel's arguments and returns its
    ``outputs``, else what differs. The schemas themselves are spelled once, in csrc/ops.cpp."""
    op = getattr(torch.ops.fused_rnn, name, None)
    if op is None:
        return f"op {name} is missing"
    schema = op.default._schema
    args = [a.name for a in schema.arguments]
    want = list(inspect.signature(fake).parameters)
    if args != want:
        return f"op {name} takes ({', '.join(args)}), expected ({', '.join(want)})"
    outs = [r.name for r in schema.returns]
    if outs != list(fake.outputs):
        return f"op {name} returns ({', '.join(outs)}), expected ({', '.join(fake.outputs)})"
    return None


# ----------------------------------------------------------------------------- fake kernels
# One per op: output shapes from the inputs, and (``outputs``) the names the schema gives them.
def _outputs(*names: str):
    def mark(fn):
        fn.outputs = names
        return fn

    return mark


def _saved(x: Tensor, need: bool, *shape: int) -> Tensor:
    return x.new_empty(shape if need else (0,), dtype=_acc(x.dtype))


@_outputs("y", "hn", "cn", "gates", "cs")
def _lstm_fwd_fake(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, need_saved):
    T, B, _ = x.shape
    H, P = c0.shape[1], h0.shape[1]
    return (
        x.new_empty(T, B, P),
        x.new_empty(B, P),
        x.new_empty(B, H),
        _saved(x, need_saved, T, B, 4 * H),
        _saved(x, need_saved, T, B, H),
    )


@_outputs("dx", "dh0", "dc0", "dw_ih", "dw_hh", "db", "dw_hr")
def _lstm_bwd_fake(x, h0, c0, w_ih, w_hh, w_hr, y, gates, cs, lengths, dy, dhn, dcn):
    return (
        torch.empty_like(x),
        torch.empty_like(h0),
        torch.empty_like(c0),
        torch.empty_like(w_ih),
        torch.empty_like(w_hh),
        w_ih.new_empty(w_ih.shape[0]),
        torch.empty_like(w_hr) if w_hr is not None else x.new_empty(0),
    )


@_outputs("y", "hn", "gates", "ghn")
def _gru_fwd_fake(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, need_saved):
    T, B, _ = x.shape
    H = w_hh.shape[1]
    return (
        x.new_empty(T, B, H),
        x.new_empty(B, H),
        _saved(x, need_saved, T, B, 3 * H),
        _saved(x, need_saved, T, B, H),
    )


@_outputs("dx", "dh0", "dw_ih", "dw_hh", "db_ih", "db_hh")
def _gru_bwd_fake(x, h0, w_ih, w_hh, y, gates, ghn, lengths, dy, dhn):
    return (
        torch.empty_like(x),
        torch.empty_like(h0),
        torch.empty_like(w_ih),
        torch.empty_like(w_hh),
        w_ih.new_empty(w_ih.shape[0]),
        w_ih.new_empty(w_ih.shape[0]),
    )


@_outputs("y", "hn")
def _rnn_fwd_fake(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, relu, need_saved):
    T, B, _ = x.shape
    return x.new_empty(T, B, h0.shape[1]), torch.empty_like(h0)


@_outputs("dx", "dh0", "dw_ih", "dw_hh", "db")
def _rnn_bwd_fake(x, h0, w_ih, w_hh, y, lengths, relu, dy, dhn):
    return (
        torch.empty_like(x),
        torch.empty_like(h0),
        torch.empty_like(w_ih),
        torch.empty_like(w_hh),
        w_ih.new_empty(w_ih.shape[0]),
    )


_FAKES = {
    "lstm_fwd": _lstm_fwd_fake,
    "lstm_bwd": _lstm_bwd_fake,
    "gru_fwd": _gru_fwd_fake,
    "gru_bwd": _gru_bwd_fake,
    "rnn_fwd": _rnn_fwd_fake,
    "rnn_bwd": _rnn_bwd_fake,
}


def _register_fakes() -> None:
    for name, fn in _FAKES.items():
        torch.library.register_fake(f"fused_rnn::{name}", fn)


# ------------------------------------------------------------------------------ the backend
_STATUS: dict[str, str | None] = {}


def _status(device: str) -> str | None:
    """None when the compiled ops run on `device` ("cpu" / "cuda") here, else why not. Asked on
    every forward (backend resolution), answered once per device and process."""
    if device not in _STATUS:
        _STATUS[device] = _find_status(device)
    return _STATUS[device]


def _find_status(device: str) -> str | None:
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

    Every cell; the LSTM also with a projection (w_hr). ``saved`` is the tail of the cell's bwd
    op arguments (everything before dy): the forward's inputs, y and the saved activations.
    """

    name: str = "compiled"
    device: str = ""

    def available(self) -> str | None:
        return _status(self.device)

    def supports(self, cell: Cell | str, x: Tensor, has_proj: bool) -> str | None:
        name = getattr(cell, "name", cell)
        if name not in CELLS:
            return f"unknown cell {name!r}"
        if has_proj and name != "lstm":
            return f"proj_size > 0 is an LSTM option, not {name}'s"
        if x.device.type != self.device:
            return f"input is on {x.device.type}, this backend runs on {self.device}"
        if x.dtype not in _DTYPES:
            return f"dtype {x.dtype} is not supported (float16, bfloat16, float32, float64 are)"
        return None

    def fwd(self, cell: Cell, x, hx, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, need_saved):
        x, w_ih, w_hh, b_ih, b_hh, w_hr = (_c(t) for t in (x, w_ih, w_hh, b_ih, b_hh, w_hr))
        hx = tuple(_c(h) for h in hx)
        if cell.is_lstm:
            y, hn, cn, gates, cs = torch.ops.fused_rnn.lstm_fwd(
                x, *hx, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, need_saved
            )
            saved = (x, *hx, w_ih, w_hh, w_hr, y, gates, cs, lengths)
            return y, (hn, cn), saved if need_saved else ()
        if cell.gates == 3:
            y, hn, gates, ghn = torch.ops.fused_rnn.gru_fwd(
                x, *hx, w_ih, w_hh, b_ih, b_hh, lengths, need_saved
            )
            saved = (x, *hx, w_ih, w_hh, y, gates, ghn, lengths)
            return y, (hn,), saved if need_saved else ()
        relu = cell.name == "rnn_relu"
        y, hn = torch.ops.fused_rnn.rnn_fwd(
            x, *hx, w_ih, w_hh, b_ih, b_hh, lengths, relu, need_saved
        )
        return y, (hn,), (x, *hx, w_ih, w_hh, y, lengths) if need_saved else ()

    def bwd(self, cell: Cell, saved, dy, dhn):
        dy = _c(dy)
        dhn = tuple(_c(d) for d in dhn)
        if cell.is_lstm:
            dx, dh0, dc0, dw_ih, dw_hh, db, dw_hr = torch.ops.fused_rnn.lstm_bwd(*saved, dy, *dhn)
            # b_ih and b_hh have the same gradient; separate tensors so the two .grad never alias.
            dw_hr = dw_hr if saved[5] is not None else None
            return dx, (dh0, dc0), dw_ih, dw_hh, db, db.clone(), dw_hr
        if cell.gates == 3:
            dx, dh0, dw_ih, dw_hh, db_ih, db_hh = torch.ops.fused_rnn.gru_bwd(*saved, dy, *dhn)
            return dx, (dh0,), dw_ih, dw_hh, db_ih, db_hh, None
        relu = cell.name == "rnn_relu"
        dx, dh0, dw_ih, dw_hh, db = torch.ops.fused_rnn.rnn_bwd(*saved, relu, dy, *dhn)
        return dx, (dh0,), dw_ih, dw_hh, db, db.clone(), None


class CppBackend(CompiledBackend):
    """The fused C++ CPU kernels (csrc/cpu/)."""

    name = "cpp"
    device = "cpu"


class CudaBackend(CompiledBackend):
    """The CUDA kernels (csrc/cuda/)."""

    name = "cuda"
    device = "cuda"
