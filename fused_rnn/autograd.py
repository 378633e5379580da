"""The autograd layer, written once for every cell over the backend contract
(see fused_rnn.backends): one layer in one direction over a padded, time-major sequence.

Three ways through a layer:
- no gradient wanted: the backend's forward alone, storing nothing;
- first-order training: :class:`RNNFunction`, the backend's fused forward and backward;
- anything the fused backward cannot express -- ``create_graph=True`` (double backward,
  gradient penalties, Hessian-vector products) or ``is_grads_batched=True`` (vmap over the
  backward) -- :class:`RNNFunction` backward differentiates the reference math
  (fused_rnn.reference) recomputed from the saved inputs, so the gradient it returns is itself
  differentiable and batchable. The first-order values are the same math, so nothing changes
  for the ordinary case; the cost of these modes is one extra forward in PyTorch ops.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .backends import Backend
from .cells import Cell
from .reference import ref_forward

__all__ = ["RNNFunction", "run_layer"]

_N_WEIGHTS = 5  # w_ih, w_hh, b_ih, b_hh, w_hr


def _is_batched(t: Tensor) -> bool:
    return torch._C._functorch.is_batchedtensor(t)


class RNNFunction(torch.autograd.Function):
    """apply(backend, cell, lengths, x, w_ih, w_hh, b_ih, b_hh, w_hr, *hx) -> (y, *hn).

    x (T, B, I); weights as in the contract (None where absent); hx the cell's states.
    """

    @staticmethod
    def forward(ctx, backend: Backend, cell: Cell, lengths, x, w_ih, w_hh, b_ih, b_hh, w_hr, *hx):
        y, hn, saved = backend.fwd(cell, x, hx, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, True)
        ctx.backend, ctx.cell, ctx.lengths = backend, cell, lengths
        ctx.n_saved = len(saved)
        # The inputs are kept too (references, no copies) for the differentiable backward.
        ctx.save_for_backward(*saved, x, w_ih, w_hh, b_ih, b_hh, w_hr, *hx)
        return (y, *hn)

    @staticmethod
    def backward(ctx, dy: Tensor, *dhn: Tensor):
        # backward() called inside an autocast region would recast the GEMMs op by op
        with torch.autocast(dy.device.type, enabled=False):
            return RNNFunction._backward(ctx, dy, *dhn)

    @staticmethod
    def _backward(ctx, dy: Tensor, *dhn: Tensor):
        tensors = ctx.saved_tensors
        saved, inputs = tensors[: ctx.n_saved], tensors[ctx.n_saved :]
        if torch.is_grad_enabled() or any(_is_batched(g) for g in (dy, *dhn)):
            grads = _differentiable_grads(ctx, inputs, dy, dhn)
        else:
            dx, dhx, dw_ih, dw_hh, db_ih, db_hh, dw_hr = ctx.backend.bwd(
                ctx.cell, saved, dy.contiguous(), tuple(g.contiguous() for g in dhn)
            )
            grads = (dx, dw_ih, dw_hh, db_ih, db_hh, dw_hr, *dhx)
        # Absent inputs (no bias, no projection) get no gradient.
        grads = tuple(None if t is None else g for t, g in zip(inputs, grads))
        return (None, None, None, *grads)


def _differentiable_grads(ctx, inputs, dy, dhn) -> tuple:
    """Gradients of every input by autograd through the reference math, recomputed from the
    saved inputs. With create_graph the saved inputs are the caller's own tensors, so the
    result stays connected to them (second order); otherwise detached copies are used."""
    create_graph = torch.is_grad_enabled()
    needs = ctx.needs_input_grad[3:]
    if create_graph:
        ins = list(inputs)
    else:
        ins = [
            None if t is None else t.detach().requires_grad_(bool(n)) for t, n in zip(inputs, needs)
        ]
    x, w_ih, w_hh, b_ih, b_hh, w_hr, *hx = ins
    wanted = [i for i, (t, n) in enumerate(zip(ins, needs)) if t is not None and n]
    out = [None] * len(ins)
    if not wanted:
        return tuple(out)
    with torch.enable_grad():
        y, hn = ref_forward(ctx.cell, x, tuple(hx), w_ih, w_hh, b_ih, b_hh, w_hr, ctx.lengths)
        grads = torch.autograd.grad(
            (y, *hn),
            [ins[i] for i in wanted],
            (dy, *dhn),
            create_graph=create_graph,
            allow_unused=True,
        )
    for i, g in zip(wanted, grads):
        out[i] = torch.zeros_like(ins[i]) if g is None else g
    return tuple(out)


def _needs_grad(tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def run_layer(
    backend: Backend,
    cell: Cell,
    x: Tensor,
    hx: tuple[Tensor, ...],
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
    w_hr: Tensor | None,
    lengths: Tensor | None,
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """One layer, one direction. x (T, B, I) -> y (T, B, P) and the final states like ``hx``.

    The reference backend runs its ops under autograd directly (every autograd feature for
    free). Otherwise, without any gradient to compute, the backend is called with
    need_saved=False, so inference stores no activations.
    """
    if backend.name == "reference":
        return ref_forward(cell, x, hx, w_ih, w_hh, b_ih, b_hh, w_hr, lengths)
    weights = (w_ih, w_hh, b_ih, b_hh, w_hr)
    if _needs_grad((x, *weights, *hx)):
        y, *hn = RNNFunction.apply(backend, cell, lengths, x, *weights, *hx)
        return y, tuple(hn)
    y, hn, _ = backend.fwd(cell, x, hx, *weights, lengths, False)
    return y, tuple(hn)
