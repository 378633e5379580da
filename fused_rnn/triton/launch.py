"""Host side of the recurrence ops: argument checks before the raw-pointer kernels,
and the one launcher that drives a recurrence kernel on its path."""

from __future__ import annotations

import torch
import triton

from .common import INTERPRET
from .config import Config

F32 = (torch.float32,)
I64 = (torch.int64,)
HALF_OR_F32 = (torch.float16, torch.bfloat16, torch.float32)


def check_args(op: str, *specs: tuple) -> None:
    """Raise ValueError naming ``op`` unless every (name, tensor, shape, dtypes) spec holds:
    exactly that shape (the kernels index raw pointers), contiguous, on the first tensor's
    device, and dtype in ``dtypes`` (a tuple; None accepts any)."""
    dev = specs[0][1].device
    for name, t, shape, dtypes in specs:
        if tuple(t.shape) != tuple(shape):
            raise ValueError(f"{op}: {name} has shape {tuple(t.shape)}, expected {tuple(shape)}")
        if dtypes is not None and t.dtype not in dtypes:
            raise ValueError(f"{op}: {name} has dtype {t.dtype}, expected one of {dtypes}")
        if t.device != dev:
            raise ValueError(f"{op}: {name} is on {t.device}, the others on {dev}")
        if not t.is_contiguous():
            raise ValueError(f"{op}: {name} must be contiguous")


def run_recurrence(
    kernel,
    cfg: Config,
    cell_consts: dict,
    B: int,
    H: int,
    args: tuple,
    t_first: int,
    n_iter: int,
    step: int,
):
    """Launch a recurrence ``kernel`` over ``n_iter`` iterations starting at step ``t_first``.

    Every recurrence kernel takes ``args`` followed by (counter_ptr, t_first, n_iter), the
    cell's constexprs ``cell_consts`` and those of ``cfg``; iteration s handles step
    t_first + step * s (step = +1 forward, -1 backward; the kernel applies the same direction
    itself). Persistent: one launch running
    all iterations with a grid barrier between them; per-step: one launch per iteration (the
    kernel boundary is the barrier).
    """
    n_b = triton.cdiv(B, cfg.BB)
    grid = (triton.cdiv(H, cfg.BH), n_b)
    # One arrival counter per batch block: blocks never wait for each other.
    counter = torch.zeros(n_b, dtype=torch.int32, device=args[0].device)
    meta = dict(cell_consts, **cfg.constexprs(), num_warps=cfg.num_warps)
    if cfg.path != "step":
        if not INTERPRET:
            # Cooperative launch: the driver refuses a grid that cannot be co-resident instead
            # of letting the barrier deadlock.
            meta["launch_cooperative_grid"] = True
        kernel[grid](*args, counter, t_first, n_iter, **meta)
        return
    for s in range(n_iter):
        kernel[grid](*args, counter, t_first + step * s, 1, **meta)
