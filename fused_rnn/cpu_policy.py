"""Which backend ``auto`` runs on the CPU: fused_rnn's "cpp" kernels or torch's own op
("native"), per case, from measured tables.

The rule is "never slower than torch.nn": "cpp" runs a case only where it was measured faster
than torch's op on this class of CPU, at the nearest measured point; everywhere else auto runs
"native" (torch's op: torch.nn's own speed, by construction). A case the tables do not cover
(another ISA class, a cell or dtype never measured, LSTM projections) goes to "native" too.

Keys: the CPU's ISA class (:func:`isa_class`), cell, dtype, training (a forward under autograd,
i.e. fwd+bwd follows) or inference, packed (per-sequence lengths) or not; within a key the
nearest measured (B, H) point in log scale decides. The points were measured with
``python -m benchmarks.cpu_profile.policy_table`` (interleaved timing, median of per-round
ratios torch-op time / cpp time, 2 threads); the machine and date are in MEASURED_ON.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["Choice", "explain", "isa_class", "order_for"]


def isa_class() -> str:
    """The CPU's class for the tables: "amx", "avx512_bf16", "avx512", "avx2" or "generic"
    (the best of these it has, as torch's cpuinfo reports it)."""
    cpu = getattr(torch, "cpu", None)

    def has(fn: str) -> bool:
        f = getattr(cpu, fn, None)
        return bool(f()) if f is not None else False

    if has("_is_amx_tile_supported"):
        return "amx"
    if has("_is_avx512_bf16_supported"):
        return "avx512_bf16"
    if has("_is_avx512_supported"):
        return "avx512"
    if has("_is_avx2_supported"):
        return "avx2"
    return "generic"


MEASURED_ON = {
    "avx2": "",  # filled by policy_table.py's output below
}

# (isa class, cell, dtype, training, packed) -> ((B, H, torch-op ms / cpp ms), ...)
TABLE: dict[tuple[str, str, str, bool, bool], tuple[tuple[int, int, float], ...]] = {}


@dataclass(frozen=True)
class Choice:
    """The CPU order auto walks for one case, and why its first entry is first."""

    order: tuple[str, ...]
    reason: str


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _cell_name(cell) -> str:
    return getattr(cell, "name", cell)


def _lookup(cell, x: torch.Tensor, has_proj: bool, packed: bool) -> tuple[str, str]:
    """("cpp" or "native", why)."""
    isa = isa_class()
    name = _cell_name(cell)
    training = torch.is_grad_enabled()
    mode = "fwd+bwd" if training else "inference"
    if has_proj:
        return "native", "LSTM projections are not in the measured tables"
    key = (isa, name, _dtype_name(x.dtype), training, packed)
    points = TABLE.get(key)
    what = f"{name} {_dtype_name(x.dtype)} {mode}{' packed' if packed else ''} on {isa}"
    if not points:
        return "native", f"{what}: not measured, so torch's own op (torch.nn's speed)"
    B = x.shape[1] if x.dim() == 3 else 1
    H = x.shape[-1]  # the input width stands in for H: the tables have I == H
    B_m, H_m, ratio = min(
        points, key=lambda p: math.hypot(math.log2(max(B, 1) / p[0]), math.log2(max(H, 1) / p[1]))
    )
    where = f"{what}, nearest measured point B={B_m} H={H_m}: cpp {ratio:.2f}x torch's op"
    return ("cpp", where) if ratio >= 1.0 else ("native", where)


def order_for(
    order: tuple[str, ...], cell, x: torch.Tensor, has_proj: bool, packed: bool
) -> Choice:
    """``order`` (AUTO_ORDER["cpu"]) with "cpp" or "native" moved first per the tables."""
    if "cpp" not in order or "native" not in order:
        return Choice(order, "one of cpp / native is not in the order")
    first, why = _lookup(cell, x, has_proj, packed)
    rest = tuple(n for n in order if n != first)
    return Choice((first, *rest), why)


def explain(cell, x: torch.Tensor, has_proj: bool = False, packed: bool = False) -> str:
    """Which backend ``backend="auto"`` runs for ``cell`` ("lstm", "gru", ...) on input ``x``
    ((T, B, I), the layout the backends see; a forward under torch.no_grad() is inference,
    otherwise training), and why."""
    from .backends import resolve_backend

    be = resolve_backend("auto", _cell_name(cell), x, has_proj, packed=packed)
    if x.device.type != "cpu":
        return f"auto -> {be.name} (first available in AUTO_ORDER[{x.device.type!r}])"
    choice = order_for(("cpp", "native"), cell, x, has_proj, packed)
    note = "" if be.name == choice.order[0] else f" ({choice.order[0]} cannot run it here)"
    return f"auto -> {be.name}{note}: {choice.reason}"
