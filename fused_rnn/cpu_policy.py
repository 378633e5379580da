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


# Read once at import: the answer cannot change within a process, and Dynamo refuses to trace
# torch.cpu's CPU queries (torch.compile would break the graph at every forward).
ISA_CLASS = isa_class()


MEASURED_ON = {
    "avx2": "AMD EPYC (family 25 model 1, AVX2+FMA, no AVX-512; KVM, 2 cores), "
    "python -m benchmarks.cpu_profile.policy_table, torch 2.13.0+cpu, 2 threads, T=16, "
    "2026-11-30, load average 6.87 at the start. The machine was shared with other jobs "
    "(load average 5-9 on 2 cores): torch's op, with more barriers per step, "
    "suffers more from lost time slices than cpp, so several ratios are inflated; a point "
    "below 1.0 sends its neighbourhood to native.",
}

# (isa class, cell, dtype, training, packed) -> ((B, H, torch-op time / cpp time), ...), the
# median over interleaved rounds; I = H, T = 16, one layer.
TABLE: dict[tuple[str, str, str, bool, bool], tuple[tuple[int, int, float], ...]] = {
    ("avx2", "lstm", "float32", False, False): (
        (1, 128, 1.26),
        (16, 128, 127.95),
        (64, 128, 3.16),
        (16, 512, 1.7),
        (64, 512, 2.28),
    ),
    ("avx2", "lstm", "float32", False, True): (
        (1, 128, 1.76),
        (16, 128, 18.14),
        (64, 128, 0.14),
        (16, 512, 2.35),
        (64, 512, 1.92),
    ),
    ("avx2", "lstm", "float32", True, False): (
        (1, 128, 17.05),
        (16, 128, 2.53),
        (64, 128, 2.11),
        (16, 512, 3.32),
        (64, 512, 1.75),
    ),
    ("avx2", "lstm", "float32", True, True): (
        (1, 128, 39.03),
        (16, 128, 3.66),
        (64, 128, 1.16),
        (16, 512, 3.97),
        (64, 512, 2.75),
    ),
    ("avx2", "lstm", "bfloat16", False, False): (
        (1, 128, 1.99),
        (16, 128, 8.81),
        (64, 128, 3.58),
        (16, 512, 3.78),
        (64, 512, 7.54),
    ),
    ("avx2", "lstm", "bfloat16", False, True): (
        (1, 128, 1.86),
        (16, 128, 27.58),
        (64, 128, 3.03),
        (16, 512, 2.48),
        (64, 512, 5.42),
    ),
    ("avx2", "lstm", "bfloat16", True, False): (
        (1, 128, 1.41),
        (16, 128, 0.99),
        (64, 128, 5.51),
        (16, 512, 6.17),
        (64, 512, 15.49),
    ),
    ("avx2", "lstm", "bfloat16", True, True): (
        (1, 128, 1.43),
        (16, 128, 1.36),
        (64, 128, 2.31),
        (16, 512, 3.55),
        (64, 512, 7.81),
    ),
    ("avx2", "gru", "float32", False, False): (
        (1, 128, 2.06),
        (16, 128, 1.92),
        (64, 128, 1.98),
        (16, 512, 1.96),
        (64, 512, 1.92),
    ),
    ("avx2", "gru", "float32", False, True): (
        (1, 128, 9.37),
        (16, 128, 15.48),
        (64, 128, 1.14),
        (16, 512, 4.38),
        (64, 512, 2.74),
    ),
    ("avx2", "gru", "float32", True, False): (
        (1, 128, 2.64),
        (16, 128, 1.4),
        (64, 128, 3.37),
        (16, 512, 3.1),
        (64, 512, 3.79),
    ),
    ("avx2", "gru", "float32", True, True): (
        (1, 128, 3.38),
        (16, 128, 4.49),
        (64, 128, 0.85),
        (16, 512, 3.47),
        (64, 512, 2.45),
    ),
    ("avx2", "gru", "bfloat16", False, False): (
        (1, 128, 1.71),
        (16, 128, 39.15),
        (64, 128, 3.56),
        (16, 512, 2.89),
        (64, 512, 5.55),
    ),
    ("avx2", "gru", "bfloat16", False, True): (
        (1, 128, 4.57),
        (16, 128, 3.15),
        (64, 128, 17.61),
        (16, 512, 1.62),
        (64, 512, 4.11),
    ),
    ("avx2", "gru", "bfloat16", True, False): (
        (1, 128, 1.24),
        (16, 128, 7.01),
        (64, 128, 1.5),
        (16, 512, 3.98),
        (64, 512, 15.4),
    ),
    ("avx2", "gru", "bfloat16", True, True): (
        (1, 128, 2.06),
        (16, 128, 16.82),
        (64, 128, 4.63),
        (16, 512, 7.08),
        (64, 512, 9.66),
    ),
    # rnn_tanh / rnn_relu / lstm_proj (proj_size = H / 4): the same command with --cells,
    # 2026-11-30, load average 4.86 at the start (shared machine), torch 2.13.0+cpu, T=16.
    ("avx2", "rnn_tanh", "float32", False, False): (
        (1, 128, 1.31),
        (16, 128, 28.06),
        (64, 128, 1.46),
        (16, 512, 0.29),
        (64, 512, 1.79),
    ),
    ("avx2", "rnn_tanh", "float32", False, True): (
        (1, 128, 1.22),
        (16, 128, 0.2),
        (64, 128, 0.11),
        (16, 512, 4.78),
        (64, 512, 1.25),
    ),
    ("avx2", "rnn_tanh", "float32", True, False): (
        (1, 128, 1.75),
        (16, 128, 28.01),
        (64, 128, 3.41),
        (16, 512, 2.18),
        (64, 512, 2.04),
    ),
    ("avx2", "rnn_tanh", "float32", True, True): (
        (1, 128, 1.06),
        (16, 128, 42.09),
        (64, 128, 0.83),
        (16, 512, 1.69),
        (64, 512, 1.71),
    ),
    ("avx2", "rnn_tanh", "bfloat16", False, False): (
        (1, 128, 1.38),
        (16, 128, 78.85),
        (64, 128, 3.44),
        (16, 512, 5.71),
        (64, 512, 5.22),
    ),
    ("avx2", "rnn_tanh", "bfloat16", False, True): (
        (1, 128, 0.03),
        (16, 128, 0.21),
        (64, 128, 4.22),
        (16, 512, 1.88),
        (64, 512, 3.76),
    ),
    ("avx2", "rnn_tanh", "bfloat16", True, False): (
        (1, 128, 1.86),
        (16, 128, 0.63),
        (64, 128, 1.21),
        (16, 512, 9.99),
        (64, 512, 4.96),
    ),
    ("avx2", "rnn_tanh", "bfloat16", True, True): (
        (1, 128, 2.17),
        (16, 128, 0.65),
        (64, 128, 1.97),
        (16, 512, 5.04),
        (64, 512, 4.17),
    ),
    ("avx2", "rnn_relu", "float32", False, False): (
        (1, 128, 1.22),
        (16, 128, 1.57),
        (64, 128, 1.06),
        (16, 512, 1.68),
        (64, 512, 1.64),
    ),
    ("avx2", "rnn_relu", "float32", False, True): (
        (1, 128, 0.52),
        (16, 128, 1.76),
        (64, 128, 1.75),
        (16, 512, 3.32),
        (64, 512, 1.6),
    ),
    ("avx2", "rnn_relu", "float32", True, False): (
        (1, 128, 0.9),
        (16, 128, 1.88),
        (64, 128, 0.69),
        (16, 512, 2.18),
        (64, 512, 1.66),
    ),
    ("avx2", "rnn_relu", "float32", True, True): (
        (1, 128, 0.64),
        (16, 128, 7.68),
        (64, 128, 4.7),
        (16, 512, 1.59),
        (64, 512, 3.05),
    ),
    ("avx2", "rnn_relu", "bfloat16", False, False): (
        (1, 128, 7.55),
        (16, 128, 1.62),
        (64, 128, 1.28),
        (16, 512, 1.31),
        (64, 512, 2.3),
    ),
    ("avx2", "rnn_relu", "bfloat16", False, True): (
        (1, 128, 1.15),
        (16, 128, 0.04),
        (64, 128, 1.56),
        (16, 512, 1.36),
        (64, 512, 1.57),
    ),
    ("avx2", "rnn_relu", "bfloat16", True, False): (
        (1, 128, 2.23),
        (16, 128, 0.64),
        (64, 128, 0.67),
        (16, 512, 1.71),
        (64, 512, 4.8),
    ),
    ("avx2", "rnn_relu", "bfloat16", True, True): (
        (1, 128, 2.22),
        (16, 128, 0.59),
        (64, 128, 1.69),
        (16, 512, 2.1),
        (64, 512, 4.52),
    ),
    ("avx2", "lstm_proj", "float32", False, False): (
        (1, 128, 72.81),
        (16, 128, 14.96),
        (64, 128, 6.1),
        (16, 512, 1.26),
        (64, 512, 1.6),
    ),
    ("avx2", "lstm_proj", "float32", False, True): (
        (1, 128, 0.1),
        (16, 128, 3.9),
        (64, 128, 1.11),
        (16, 512, 1.57),
        (64, 512, 5.4),
    ),
    ("avx2", "lstm_proj", "float32", True, False): (
        (1, 128, 17.94),
        (16, 128, 1.4),
        (64, 128, 3.09),
        (16, 512, 4.98),
        (64, 512, 5.44),
    ),
    ("avx2", "lstm_proj", "float32", True, True): (
        (1, 128, 3.14),
        (16, 128, 7.5),
        (64, 128, 3.45),
        (16, 512, 3.78),
        (64, 512, 2.77),
    ),
    ("avx2", "lstm_proj", "bfloat16", False, False): (
        (1, 128, 0.11),
        (16, 128, 1.64),
        (64, 128, 3.17),
        (16, 512, 3.0),
        (64, 512, 5.58),
    ),
    ("avx2", "lstm_proj", "bfloat16", False, True): (
        (1, 128, 12.2),
        (16, 128, 161.65),
        (64, 128, 7.03),
        (16, 512, 2.64),
        (64, 512, 4.34),
    ),
    ("avx2", "lstm_proj", "bfloat16", True, False): (
        (1, 128, 2.21),
        (16, 128, 0.77),
        (64, 128, 2.56),
        (16, 512, 4.23),
        (64, 512, 10.66),
    ),
    ("avx2", "lstm_proj", "bfloat16", True, True): (
        (1, 128, 2.23),
        (16, 128, 0.68),
        (64, 128, 1.56),
        (16, 512, 2.61),
        (64, 512, 6.01),
    ),
}


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
    isa = ISA_CLASS
    name = _cell_name(cell)
    training = torch.is_grad_enabled()
    mode = "fwd+bwd" if training else "inference"
    if has_proj:
        name = "lstm_proj"
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
