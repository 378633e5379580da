"""Automatic mixed precision: what torch's recurrent modules do under ``torch.autocast``.

The fused layers run with autocast switched off inside (their GEMMs would otherwise be recast
op by op); this module decides, once per call, what goes in and what comes out, so that outputs
and states have the dtypes torch.nn's modules give:

- CUDA: cuDNN's RNN op and the ``*_cell`` ops are on autocast's lower-precision list: inputs,
  states and weights are cast to the autocast dtype, and everything comes out in it.
- CPU: torch runs the recurrence as composite math whose GEMMs (linear / addmm) are on the
  lower-precision list while the pointwise update promotes against the state it updates; the
  LSTM without projection goes to oneDNN's fused layer instead (``mkldnn_rnn_layer``, on the
  list) when x and the states have one dtype. So: the GEMMs in the autocast dtype, outputs in
  the dtype torch's math ends in.

Parameters stay float32 (the cast is an ordinary differentiable ``.to``, so their gradients are
float32); the kernels accumulate in float32 and hold the state in float32 as always.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .cells import Cell

__all__ = ["autocast_dtype", "cast_inputs", "output_dtypes"]


def autocast_dtype(x: Tensor) -> torch.dtype | None:
    """The autocast dtype in force for x's device type, or None when autocast is off."""
    dev = x.device.type
    if dev not in ("cpu", "cuda", "xpu", "mps") or not torch.is_autocast_enabled(dev):
        return None
    return torch.get_autocast_dtype(dev)


def _cast(t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    # autocast's own eligibility rule: floating tensors other than float64
    if t is None or not t.is_floating_point() or t.dtype == torch.float64:
        return t
    return t.to(dtype)


def cast_inputs(x: Tensor, hx: Sequence[Tensor], weights: Sequence[Sequence], dtype: torch.dtype):
    """x, states and every layer's weights cast as autocast casts a lower-precision op's args."""
    return (
        _cast(x, dtype),
        tuple(_cast(h, dtype) for h in hx),
        [tuple(_cast(t, dtype) for t in w) for w in weights],
    )


def output_dtypes(
    cell: Cell,
    device_type: str,
    dtype: torch.dtype,
    x_dtype: torch.dtype,
    hx_dtypes: Sequence[torch.dtype],
    has_proj: bool,
    is_cell: bool,
) -> tuple[torch.dtype, ...]:
    """(output dtype, *state dtypes) that torch's module returns under autocast(dtype), from the
    dtypes the caller passed (before any cast)."""
    if x_dtype == torch.float64:
        return (x_dtype, *hx_dtypes)
    n = 1 + cell.n_states
    if device_type != "cpu":
        return (dtype,) * n
    if (
        cell.is_lstm
        and not is_cell
        and not has_proj
        and x_dtype in (torch.float32, dtype)
        and all(d == x_dtype for d in hx_dtypes)
    ):
        return (dtype,) * n  # oneDNN's fused LSTM layer
    if cell.name.startswith("rnn_"):
        return (dtype,) * n  # act(linear + linear): nothing promotes
    if cell.is_lstm:
        c = torch.promote_types(dtype, hx_dtypes[1])
        h = dtype if has_proj else c  # the projection is one more linear
        return (h, h, c)
    h = torch.promote_types(dtype, hx_dtypes[0])  # GRU: n + z * (h - n)
    return (h, h)
