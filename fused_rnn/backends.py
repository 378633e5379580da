"""Backend contract, registry and selection.

The backend contract
====================
Every backend implements the same two functions, for every cell (fused_rnn.cells), for ONE layer
in ONE direction over a whole (padded, time-major) sequence. Everything above it -- autograd,
layer and direction stacking, dropout, reversal of the backward direction, PackedSequence
handling, autocast, validation -- is written once in :mod:`fused_rnn.autograd` and
:mod:`fused_rnn.functional`.

Dimension legend: T time steps, B batch, I input features, H hidden size, P output size
(``proj_size`` if > 0 else H; LSTM only), G gates (``cell.gates``: 4 for LSTM in order i, f, g, o;
3 for GRU in order r, z, n; 1 for the Elman RNN -- exactly torch's layouts, so nn.LSTM / nn.GRU /
nn.RNN weights are used as they are).

``fwd(cell, x, hx, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, need_saved) -> (y, hn, saved)``
    cell    a :class:`fused_rnn.cells.Cell`
    x       (T, B, I)  contiguous, dtype one of float16 / bfloat16 / float32 / float64
    hx      tuple of ``cell.n_states`` states in x's dtype and device: LSTM ``(h0 (B, P),
            c0 (B, H))``, the others ``(h0 (B, H),)``
    w_ih    (G*H, I)    w_hh (G*H, P)
    b_ih    (G*H,) or None;  b_hh (G*H,) or None (both None or both tensors). GRU: b_hh holds
            nn.GRU's separate b_hn in its last H rows:
            n = tanh(W_in x + b_in + r * (W_hn h + b_hn)).
    w_hr    (P, H) or None (LSTM projection; only when the backend's ``supports`` accepted it)
    lengths None (every sequence has T steps) or int64 (B,) on x's device, 1 <= lengths[b] <= T
    need_saved  False when no gradient will be asked for: the backend may then skip storing
            activations (inference) and return ``saved=()``.
    returns y (T, B, P) in x's dtype with y[t, b] = 0 for t >= lengths[b];
            hn: a tuple like hx, the state after step lengths[b]-1 of each sequence;
            saved: a tuple of tensors (or None), whatever the backend needs for its backward.
``bwd(cell, saved, dy, dhn) -> (dx, dhx, dw_ih, dw_hh, db_ih, db_hh, dw_hr)``
    dy (T, B, P), dhn a tuple like hx: always real tensors (zeros where nothing flowed).
    dhx is a tuple like hx. Gradients have the shapes and dtypes of the corresponding inputs;
    db_* and dw_hr may be None where the input was None (the autograd layer drops gradients of
    absent inputs anyway). dy[t, b] for t >= lengths[b] must be ignored (y is constant 0 there).

Cell math is torch's: LSTM as nn.LSTM (with a projection h = W_hr (o * tanh(c))), GRU as nn.GRU,
the Elman RNN h' = act(W_ih x + b_ih + W_hh h + b_hh) with act tanh or relu.

Backends must accumulate in float32 (or float64 for float64 inputs) and hold the recurrent state
in at least float32 for float16 / bfloat16 inputs.

A backend may instead run a whole multi-layer stack (``run_stack``, see fused_rnn.native): it
then owns autograd for it.

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
from collections.abc import Callable, Iterator
from typing import Protocol

import torch

from .cells import Cell, cell_for_mode
from .cpu_policy import order_for

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

    def supports(self, cell: Cell, x: torch.Tensor, has_proj: bool) -> str | None: ...

    def fwd(self, cell, x, hx, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, need_saved): ...

    def bwd(self, cell, saved, dy, dhn): ...


def as_cell(cell: Cell | str) -> Cell:
    """A Cell from a Cell, a cell name ("lstm") or an nn.RNNBase mode ("RNN_TANH")."""
    return cell if isinstance(cell, Cell) else cell_for_mode(cell)


# name -> zero-argument factory returning the Backend. Factories import lazily, so that
# `import fused_rnn` never imports triton or loads the compiled extension.
_FACTORIES: dict[str, callable] = {}
_INSTANCES: dict[str, Backend] = {}
_LOAD_ERRORS: dict[str, str] = {}
_scope = threading.local()
_warned: set[tuple[str, str]] = set()


def register_backend(name: str, factory: Callable[[], Backend]) -> None:
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
    name: str,
    cell: Cell | str,
    x: torch.Tensor,
    has_proj: bool = False,
    packed: bool = False,
    batch: int | None = None,
) -> Backend:
    """The backend that runs ``cell`` (a Cell, or a name such as "lstm") on input ``x`` for the
    requested name.

    Explicit names raise if they cannot run the case; "auto" walks AUTO_ORDER, which on the CPU
    fused_rnn.cpu_policy reorders per case (``packed``: the batch has per-sequence lengths;
    ``batch``: the batch size when ``x`` is not laid out (T, B, I), e.g. packed data).
    """
    cell = as_cell(cell)
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
        order = order_for(order, cell, x, has_proj, packed, batch).order
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
