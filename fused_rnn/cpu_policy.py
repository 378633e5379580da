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

from .cells import Cell

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
    "avx2": "AMD EPYC (family 25 model 1, AVX2+FMA, no AVX-512; KVM, 2 cores), torch 2.13.0+cpu, "
    "2 threads, idle machine, 2026-11-30. float32 rows: python -m "
    "benchmarks.cpu_profile.policy_table --threads 2 --dtypes float32 (T=32, rounds filling 1 s "
    "per case; load average 0.65 at the start), after the inline AVX2 sigmoid / tanh. bfloat16 "
    "rows: the same at T=16, 3 rounds (load average 0.98); cpp leads there by 3x-68x, far "
    "beyond any drift."
}

# (isa class, cell, dtype, training, packed) -> ((B, H, torch-op time / cpp time), ...), the
# median over interleaved rounds; I = H, one layer. cell: lstm, gru, rnn_tanh, rnn_relu, or
# lstm_proj (an LSTM with proj_size = H / 4). A case runs cpp where its nearest point is at least
# MARGIN.
TABLE: dict[tuple[str, str, str, bool, bool], tuple[tuple[int, int, float], ...]] = {
    ("avx2", "lstm", "float32", False, False): (
        (1, 128, 1.22),
        (16, 128, 1.14),
        (64, 128, 1.06),
        (16, 256, 1.06),
        (16, 512, 1.14),
        (64, 512, 1.02),
    ),
    ("avx2", "lstm", "float32", False, True): (
        (1, 128, 1.01),
        (16, 128, 1.9),
        (64, 128, 1.31),
        (16, 256, 1.38),
        (16, 512, 1.36),
        (64, 512, 0.92),
    ),
    ("avx2", "lstm", "float32", True, False): (
        (1, 128, 1.0),
        (16, 128, 1.1),
        (64, 128, 1.05),
        (16, 256, 1.05),
        (16, 512, 1.11),
        (64, 512, 0.97),
    ),
    ("avx2", "lstm", "float32", True, True): (
        (1, 128, 1.01),
        (16, 128, 2.22),
        (64, 128, 1.45),
        (16, 256, 1.77),
        (16, 512, 1.74),
        (64, 512, 1.15),
    ),
    ("avx2", "lstm", "bfloat16", False, False): (
        (1, 128, 1.75),
        (16, 128, 5.09),
        (64, 128, 8.0),
        (16, 512, 5.65),
        (64, 512, 6.74),
    ),
    ("avx2", "lstm", "bfloat16", False, True): (
        (1, 128, 1.78),
        (16, 128, 3.56),
        (64, 128, 5.01),
        (16, 512, 3.15),
        (64, 512, 4.91),
    ),
    ("avx2", "lstm", "bfloat16", True, False): (
        (1, 128, 4.54),
        (16, 128, 11.28),
        (64, 128, 17.68),
        (16, 512, 36.42),
        (64, 512, 47.76),
    ),
    ("avx2", "lstm", "bfloat16", True, True): (
        (1, 128, 3.62),
        (16, 128, 5.41),
        (64, 128, 9.04),
        (16, 512, 21.59),
        (64, 512, 31.86),
    ),
    ("avx2", "gru", "float32", False, False): (
        (1, 128, 2.88),
        (16, 128, 2.38),
        (64, 128, 1.64),
        (16, 256, 1.81),
        (16, 512, 1.6),
        (64, 512, 1.39),
    ),
    ("avx2", "gru", "float32", False, True): (
        (1, 128, 2.15),
        (16, 128, 1.56),
        (64, 128, 1.16),
        (16, 256, 1.48),
        (16, 512, 1.19),
        (64, 512, 1.0),
    ),
    ("avx2", "gru", "float32", True, False): (
        (1, 128, 5.96),
        (16, 128, 3.05),
        (64, 128, 1.91),
        (16, 256, 2.15),
        (16, 512, 1.72),
        (64, 512, 1.45),
    ),
    ("avx2", "gru", "float32", True, True): (
        (1, 128, 4.65),
        (16, 128, 2.15),
        (64, 128, 1.26),
        (16, 256, 1.48),
        (16, 512, 1.35),
        (64, 512, 1.1),
    ),
    ("avx2", "gru", "bfloat16", False, False): (
        (1, 128, 2.01),
        (16, 128, 6.24),
        (64, 128, 9.3),
        (16, 512, 6.02),
        (64, 512, 7.29),
    ),
    ("avx2", "gru", "bfloat16", False, True): (
        (1, 128, 1.83),
        (16, 128, 3.94),
        (64, 128, 5.66),
        (16, 512, 3.48),
        (64, 512, 4.74),
    ),
    ("avx2", "gru", "bfloat16", True, False): (
        (1, 128, 3.13),
        (16, 128, 10.78),
        (64, 128, 14.85),
        (16, 512, 41.07),
        (64, 512, 54.93),
    ),
    ("avx2", "gru", "bfloat16", True, True): (
        (1, 128, 2.99),
        (16, 128, 5.85),
        (64, 128, 9.9),
        (16, 512, 20.97),
        (64, 512, 29.56),
    ),
    ("avx2", "rnn_tanh", "float32", False, False): (
        (1, 128, 2.12),
        (16, 128, 2.01),
        (64, 128, 1.68),
        (16, 256, 1.73),
        (16, 512, 1.69),
        (64, 512, 1.37),
    ),
    ("avx2", "rnn_tanh", "float32", False, True): (
        (1, 128, 1.66),
        (16, 128, 1.18),
        (64, 128, 1.05),
        (16, 256, 1.27),
        (16, 512, 1.25),
        (64, 512, 0.92),
    ),
    ("avx2", "rnn_tanh", "float32", True, False): (
        (1, 128, 3.23),
        (16, 128, 2.59),
        (64, 128, 1.8),
        (16, 256, 2.15),
        (16, 512, 1.64),
        (64, 512, 1.25),
    ),
    ("avx2", "rnn_tanh", "float32", True, True): (
        (1, 128, 2.36),
        (16, 128, 1.65),
        (64, 128, 0.96),
        (16, 256, 1.47),
        (16, 512, 1.25),
        (64, 512, 0.82),
    ),
    ("avx2", "rnn_tanh", "bfloat16", False, False): (
        (1, 128, 1.35),
        (16, 128, 3.75),
        (64, 128, 4.86),
        (16, 512, 5.02),
        (64, 512, 7.08),
    ),
    ("avx2", "rnn_tanh", "bfloat16", False, True): (
        (1, 128, 1.23),
        (16, 128, 2.62),
        (64, 128, 3.43),
        (16, 512, 3.25),
        (64, 512, 4.2),
    ),
    ("avx2", "rnn_tanh", "bfloat16", True, False): (
        (1, 128, 2.28),
        (16, 128, 5.08),
        (64, 128, 8.76),
        (16, 512, 21.87),
        (64, 512, 24.62),
    ),
    ("avx2", "rnn_tanh", "bfloat16", True, True): (
        (1, 128, 2.06),
        (16, 128, 3.71),
        (64, 128, 5.44),
        (16, 512, 10.97),
        (64, 512, 16.66),
    ),
    ("avx2", "rnn_relu", "float32", False, False): (
        (1, 128, 1.85),
        (16, 128, 1.56),
        (64, 128, 1.32),
        (16, 256, 1.45),
        (16, 512, 1.44),
        (64, 512, 1.22),
    ),
    ("avx2", "rnn_relu", "float32", False, True): (
        (1, 128, 1.36),
        (16, 128, 1.08),
        (64, 128, 0.87),
        (16, 256, 1.12),
        (16, 512, 1.17),
        (64, 512, 0.87),
    ),
    ("avx2", "rnn_relu", "float32", True, False): (
        (1, 128, 2.81),
        (16, 128, 2.39),
        (64, 128, 1.75),
        (16, 256, 2.06),
        (16, 512, 1.69),
        (64, 512, 1.28),
    ),
    ("avx2", "rnn_relu", "float32", True, True): (
        (1, 128, 2.48),
        (16, 128, 1.71),
        (64, 128, 0.9),
        (16, 256, 1.45),
        (16, 512, 1.35),
        (64, 512, 0.82),
    ),
    ("avx2", "rnn_relu", "bfloat16", False, False): (
        (1, 128, 1.41),
        (16, 128, 3.75),
        (64, 128, 5.58),
        (16, 512, 5.27),
        (64, 512, 6.56),
    ),
    ("avx2", "rnn_relu", "bfloat16", False, True): (
        (1, 128, 1.27),
        (16, 128, 2.18),
        (64, 128, 3.26),
        (16, 512, 3.01),
        (64, 512, 3.91),
    ),
    ("avx2", "rnn_relu", "bfloat16", True, False): (
        (1, 128, 2.11),
        (16, 128, 5.49),
        (64, 128, 9.06),
        (16, 512, 24.13),
        (64, 512, 29.48),
    ),
    ("avx2", "rnn_relu", "bfloat16", True, True): (
        (1, 128, 2.3),
        (16, 128, 3.89),
        (64, 128, 7.16),
        (16, 512, 12.06),
        (64, 512, 18.34),
    ),
    ("avx2", "lstm_proj", "float32", False, False): (
        (1, 128, 3.08),
        (16, 128, 2.58),
        (64, 128, 2.09),
        (16, 256, 1.83),
        (16, 512, 1.48),
        (64, 512, 1.35),
    ),
    ("avx2", "lstm_proj", "float32", False, True): (
        (1, 128, 2.39),
        (16, 128, 2.02),
        (64, 128, 1.48),
        (16, 256, 1.46),
        (16, 512, 1.14),
        (64, 512, 0.98),
    ),
    ("avx2", "lstm_proj", "float32", True, False): (
        (1, 128, 5.66),
        (16, 128, 3.39),
        (64, 128, 1.99),
        (16, 256, 2.05),
        (16, 512, 1.52),
        (64, 512, 1.27),
    ),
    ("avx2", "lstm_proj", "float32", True, True): (
        (1, 128, 5.03),
        (16, 128, 2.88),
        (64, 128, 1.58),
        (16, 256, 2.07),
        (16, 512, 1.49),
        (64, 512, 1.17),
    ),
    ("avx2", "lstm_proj", "bfloat16", False, False): (
        (1, 128, 2.39),
        (16, 128, 5.2),
        (64, 128, 8.21),
        (16, 512, 5.96),
        (64, 512, 8.03),
    ),
    ("avx2", "lstm_proj", "bfloat16", False, True): (
        (1, 128, 1.99),
        (16, 128, 3.86),
        (64, 128, 5.67),
        (16, 512, 3.73),
        (64, 512, 4.91),
    ),
    ("avx2", "lstm_proj", "bfloat16", True, False): (
        (1, 128, 3.4),
        (16, 128, 9.2),
        (64, 128, 12.61),
        (16, 512, 37.28),
        (64, 512, 45.81),
    ),
    ("avx2", "lstm_proj", "bfloat16", True, True): (
        (1, 128, 3.54),
        (16, 128, 6.29),
        (64, 128, 10.34),
        (16, 512, 20.57),
        (64, 512, 29.34),
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


# cpp must beat torch's op by this factor at the nearest measured point to be chosen: on the
# project's shared 2-core machine, repeated interleaved medians of one case move by up to ~10%
# (LSTM B=64 H=128 fwd+bwd: 1.05x in the table, 0.90x and 0.93x in two later runs), so a
# near-tie goes to torch's own op, which is torch.nn's speed by construction.
MARGIN = 1.10

_CHOICES: dict[tuple, tuple[str, str]] = {}


def _lookup(
    cell, x: torch.Tensor, has_proj: bool, packed: bool, batch: int | None = None
) -> tuple[str, str]:
    """("cpp" or "native", why). x is (T, B, I) unless ``batch`` gives B."""
    name = "lstm_proj" if has_proj else _cell_name(cell)
    B = batch if batch is not None else x.shape[1] if x.dim() == 3 else 1
    # The input width stands in for H: the tables have I == H.
    key = (ISA_CLASS, name, x.dtype, torch.is_grad_enabled(), packed, B, x.shape[-1])
    if torch.compiler.is_compiling():  # traced once per graph: no cache to guard on
        return _choose(*key)
    hit = _CHOICES.get(key)
    if hit is None:  # the answer is a pure function of the key: computed once per process
        hit = _CHOICES[key] = _choose(*key)
    return hit


def _choose(
    isa: str, name: str, dtype: torch.dtype, training: bool, packed: bool, B: int, H: int
) -> tuple[str, str]:
    mode = "fwd+bwd" if training else "inference"
    key = (isa, name, _dtype_name(dtype), training, packed)
    points = TABLE.get(key)
    what = f"{name} {_dtype_name(dtype)} {mode}{' packed' if packed else ''} on {isa}"
    if not points:
        return "native", f"{what}: not measured, so torch's own op (torch.nn's speed)"
    B_m, H_m, ratio = min(
        points, key=lambda p: math.hypot(math.log2(max(B, 1) / p[0]), math.log2(max(H, 1) / p[1]))
    )
    where = f"{what}, nearest measured point B={B_m} H={H_m}: cpp {ratio:.2f}x torch's op"
    if ratio >= MARGIN:
        return "cpp", where
    return "native", f"{where} (cpp needs {MARGIN:.2f}x)"


def order_for(
    order: tuple[str, ...],
    cell,
    x: torch.Tensor,
    has_proj: bool,
    packed: bool,
    batch: int | None = None,
) -> Choice:
    """``order`` (AUTO_ORDER["cpu"]) with "cpp" or "native" moved first per the tables; x is
    (T, B, I) unless ``batch`` gives B."""
    if "cpp" not in order or "native" not in order:
        return Choice(order, "one of cpp / native is not in the order")
    first, why = _lookup(cell, x, has_proj, packed, batch)
    rest = tuple(n for n in order if n != first)
    return Choice((first, *rest), why)


def explain(cell: Cell | str, x: torch.Tensor, has_proj: bool = False, packed: bool = False) -> str:
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
