"""Backend contract, registry and selection.

The backend contract
====================
Every backend implements the same four functions for ONE layer in ONE direction over a whole
(padded, time-major) sequence. Everything above it -- autograd, layer and direction stacking,
dropout, reversal of the backward direction, PackedSequence handling, validation -- is written
once in :mod:`fused_rnn.autograd` and :mod:`fused_rnn.functional`.

Dimension legend: T time steps, B batch, I input features, H hidden size, P output size of the
LSTM (``proj_size`` if > 0 else H), G gates (4 for LSTM in order i, f, g, o; 3 for GRU in order
r, z, n -- exactly torch's layouts, so nn.LSTM / nn.GRU weights are used as they are).

``lstm_fwd(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, need_saved) -> (y, hn, cn, saved)``
    x       (T, B, I)  contiguous, dtype one of float16 / bfloat16 / float32 / float64
    h0      (B, P)     same dtype and device as x
    c0      (B, H)
    w_ih    (4H, I)    w_hh (4H, P)
    b_ih    (4H,) or None;  b_hh (4H,) or None (both None or both tensors)
    w_hr    (P, H) or None (projection; only when the backend's ``supports`` accepted it)
    lengths None (every sequence has T steps) or int64 (B,) on x's device, 1 <= lengths[b] <= T
    need_saved  False when no gradient will be asked for: the backend may then skip storing
            activations (inference) and return ``saved=()``.
    returns y (T, B, P) in x's dtype with y[t, b] = 0 for t >= lengths[b];
            hn (B, P), cn (B, H): the state after step lengths[b]-1 of each sequence;
            saved: a tuple of tensors, whatever the backend needs for its backward (the input
            projection hoisted out of the loop, gate activations, ... -- the backend's choice).
``lstm_bwd(saved, dy, dhn, dcn) -> (dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr)``
    dy (T, B, P), dhn (B, P), dcn (B, H): always real tensors (zeros where nothing flowed).
    Gradients have the shapes and dtypes of the corresponding inputs; db_* and dw_hr may be None
    where the input was None (the autograd layer drops gradients of absent inputs anyway).
    dy[t, b] for t >= lengths[b] must be ignored (y is constant 0 there).
``gru_fwd(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, need_saved) -> (y, hn, saved)``
    as above with G=3 and no cell state; b_hh holds nn.GRU's separate b_hn in its last H rows:
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn)).
``gru_bwd(saved, dy, dhn) -> (dx, dh0, dw_ih, dw_hh, db_ih, db_hh)``

Backends must accumulate in float32 (or float64 for float64 inputs) and hold the recurrent state
in at least float32 for float16 / bfloat16 inputs.

A backend also answers ``available() -> str | None`` (None when usable, else the reason and how
to fix it) and ``supports(cell, x, has_proj) -> str | None`` (None when it can run that case).

Selection
=========
``backend="auto"`` (the default of every module and function) resolves, in this order of
precedence: the innermost ``with fused_rnn.use_backend(name)`` scope, then the environment
variable ``FUSED_RNN_BACKEND``, then the first backend in ``AUTO_ORDER[device type]`` that is
available and supports the case. Falling back past a backend that is higher in that order says
so once per (backend, reason) with a warning. A backend named explicitly (argument, scope or
environment) that cannot run raises :class:`BackendUnavailableError` with the reason.
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from collections.abc import Iterator
from typing import Protocol

import torch

__all__ = [
    "AUTO_ORDER",
    "Backend",
    "BackendUnavailableError",
    "available_backends",
    "backend_status",
    "get_backend",
    "register_backend",
    "resolve_backend",
    "use_backend",
]

ENV_VAR = "FUSED_RNN_BACKEND"

# Fastest first. The reference backend is the last resort everywhere.
AUTO_ORDER: dict[str, tuple[str, ...]] = {
    "cuda": ("cuda", "triton", "reference"),
    "cpu": ("cpp", "native", "reference"),
}


class BackendUnavailableError(RuntimeError):
    """A backend was asked for by name and cannot run (not built, not installed, or the case is
    outside what it supports). The message says why and how to get it."""


class Backend(Protocol):
    name: str

    def available(self) -> str | None: ...

    def supports(self, cell: str, x: torch.Tensor, has_proj: bool) -> str | None: ...

    def lstm_fwd(self, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, need_saved): ...

    def lstm_bwd(self, saved, dy, dhn, dcn): ...

    def gru_fwd(self, x, h0, w_ih, w_hh, b_ih, b_hh, lengths, need_saved): ...

    def gru_bwd(self, saved, dy, dhn): ...


# name -> zero-argument factory returning the Backend. Factories import lazily, so that
# `import fused_rnn` never imports triton or loads the compiled extension.
_FACTORIES: dict[str, callable] = {}
_INSTANCES: dict[str, Backend] = {}
_LOAD_ERRORS: dict[str, str] = {}
_scope = threading.local()
_warned: set[tuple[str, str]] = set()


def register_backend(name: str, factory) -> None:
    """Register ``factory() -> Backend`` under ``name`` (replacing any earlier one)."""
    _FACTORIES[name] = factory
    _INSTANCES.pop(name, None)
    _LOAD_ERRORS.pop(name, None)


def _instance(name: str) -> Backend | None:
    if name not in _INSTANCES and name not in _LOAD_ERRORS:
        try:
            _INSTANCES[name] = _FACTORIES[name]()
        except Exception as e:  # noqa: BLE001 - any import failure makes it unavailable
            _LOAD_ERRORS[name] = f"failed to load: {type(e).__name__}: {e}"
    return _INSTANCES.get(name)


def backend_status() -> dict[str, str | None]:
    """``{name: None if usable here else the reason}`` for every registered backend."""
    out = {}
    for name in _FACTORIES:
        be = _instance(name)
        out[name] = _LOAD_ERRORS[name] if be is None else be.available()
    return out


def available_backends() -> list[str]:
    """Names of the backends that can run on this machine."""
    return [name for name, why in backend_status().items() if why is None]


def get_backend(name: str) -> Backend:
    """The backend called ``name``; raises BackendUnavailableError if it cannot run here."""
    if name not in _FACTORIES:
        raise BackendUnavailableError(
            f"unknown fused_rnn backend {name!r}; known: {', '.join(_FACTORIES)} or 'auto'"
        )
    be = _instance(name)
    why = _LOAD_ERRORS[name] if be is None else be.available()
    if why is not None:
        raise BackendUnavailableError(f"fused_rnn backend {name!r} is not available: {why}")
    return be


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Within this scope, modules and functions created with ``backend="auto"`` use ``name``
    (which may itself be "auto"). Scopes nest; the innermost wins."""
    stack = getattr(_scope, "stack", None)
    if stack is None:
        stack = _scope.stack = []
    stack.append(name)
    try:
        yield
    finally:
        stack.pop()


def _requested(name: str) -> str:
    if name != "auto":
        return name
    stack = getattr(_scope, "stack", None)
    if stack:
        return stack[-1]
    return os.environ.get(ENV_VAR, "").strip() or "auto"


def _warn_once(key: tuple[str, str], msg: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(msg, RuntimeWarning, stacklevel=4)


def resolve_backend(
    name: str, cell: str, x: torch.Tensor, has_proj: bool = False, packed: bool = False
) -> Backend:
    """The backend that runs ``cell`` ("lstm" or "gru") on input ``x`` for the requested name.

    Explicit names raise if they cannot run the case; "auto" walks AUTO_ORDER, which on the CPU
    fused_rnn.cpu_policy reorders per case (``packed``: the batch has per-sequence lengths).
    """
    req = _requested(name)
    if req != "auto":
        be = get_backend(req)
        why = be.supports(cell, x, has_proj)
        if why is not None:
            raise BackendUnavailableError(
                f"fused_rnn backend {req!r} cannot run this {cell}: {why}"
            )
        return be
    order = AUTO_ORDER.get(x.device.type, ("triton", "reference"))
    if x.device.type == "cpu":
        from .cpu_policy import order_for

        order = order_for(order, cell, x, has_proj, packed).order
    skipped = []
    for cand in order:
        if cand not in _FACTORIES:
            continue
        be = _instance(cand)
        why = _LOAD_ERRORS[cand] if be is None else be.available()
        if why is None:
            why = be.supports(cell, x, has_proj)
        if why is None:
            for s_name, s_why in skipped:
                _warn_once(
                    (s_name, s_why),
                    f"fused_rnn: backend {s_name!r} skipped ({s_why}); using {cand!r}",
                )
            return be
        skipped.append((cand, why))
    raise BackendUnavailableError(
        f"no fused_rnn backend can run this {cell} on {x.device.type}: "
        + "; ".join(f"{n}: {w}" for n, w in skipped)
    )


def _register_builtin() -> None:
    def reference():
        from .reference import ReferenceBackend

        return ReferenceBackend()

    def cpp():
        from .ops import CppBackend

        return CppBackend()

    def cuda():
        from .ops import CudaBackend

        return CudaBackend()

    def triton_():
        from .triton import TritonBackend

        return TritonBackend()

    def native():
        from .native import NativeBackend

        return NativeBackend()

    register_backend("reference", reference)
    register_backend("native", native)
    register_backend("cpp", cpp)
    register_backend("cuda", cuda)
    register_backend("triton", triton_)


_register_builtin()
