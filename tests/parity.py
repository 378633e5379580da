"""Parity helpers: run torch's module and ours on the same weights and inputs, return every
output, final state and gradient, and measure errors against a float64 reference.

Kept out of the test files so the CPU grid, the GPU grid and the benchmarks' correctness
checks share one implementation.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fused_rnn

OURS = {
    "lstm": fused_rnn.LSTM,
    "gru": fused_rnn.GRU,
    "rnn_tanh": fused_rnn.RNN,
    "rnn_relu": fused_rnn.RNN,
}
THEIRS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn_tanh": nn.RNN, "rnn_relu": nn.RNN}


@dataclasses.dataclass(frozen=True)
class Case:
    cell: str = "lstm"
    B: int = 3
    T: int = 5
    I: int = 4  # noqa: E741 - the dimension's name
    H: int = 6
    layers: int = 1
    bidir: bool = False
    batch_first: bool = False
    proj: int = 0
    bias: bool = True
    packed: bool = False  # PackedSequence input with unsorted, distinct lengths
    hx: bool = False  # pass an initial state
    unbatched: bool = False
    small: bool = False  # cheap enough for interpreted backends

    @property
    def id(self) -> str:
        s = f"{self.cell}-B{self.B}-T{self.T}-I{self.I}-H{self.H}"
        for flag, tag in (
            (self.layers > 1, f"L{self.layers}"),
            (self.bidir, "bi"),
            (self.batch_first, "bf"),
            (self.proj, f"P{self.proj}"),
            (not self.bias, "nobias"),
            (self.packed, "packed"),
            (self.hx, "hx"),
            (self.unbatched, "unbatched"),
        ):
            if flag:
                s += f"-{tag}"
        return s

    def module_kwargs(self) -> dict:
        kw = dict(
            num_layers=self.layers,
            bidirectional=self.bidir,
            batch_first=self.batch_first,
            bias=self.bias,
        )
        if self.proj:
            kw["proj_size"] = self.proj
        if self.cell.startswith("rnn_"):
            kw["nonlinearity"] = self.cell[4:]
        return kw


def make_pair(case: Case, backend: str, dtype, device):
    """(torch module, our module) with identical weights, in ``dtype`` on ``device``."""
    theirs = THEIRS[case.cell](case.I, case.H, **case.module_kwargs())
    ours = OURS[case.cell](case.I, case.H, backend=backend, **case.module_kwargs())
    ours.load_state_dict(theirs.state_dict())
    return theirs.to(device, dtype), ours.to(device, dtype)


def make_inputs(case: Case, dtype, device, gen: torch.Generator):
    """Random input and hx (float64 on the CPU; cast by run_module). Lengths distinct and
    unsorted when packed, with the longest equal to T."""
    D = 2 if case.bidir else 1
    x = torch.randn(case.T, case.B, case.I, generator=gen, dtype=torch.float64)
    lengths = None
    if case.packed:
        lengths = torch.randint(1, case.T + 1, (case.B,), generator=gen)
        lengths[torch.randint(0, case.B, (1,), generator=gen)] = case.T
    P = case.proj or case.H
    hx = None
    if case.hx:
        h = torch.randn(case.layers * D, case.B, P, generator=gen, dtype=torch.float64)
        c = torch.randn(case.layers * D, case.B, case.H, generator=gen, dtype=torch.float64)
        hx = (h, c) if case.cell == "lstm" else h
    return x, lengths, hx


def run_module(
    module, case: Case, x, lengths, hx, dtype, device, gen_seed: int = 1, rounded_to=None
):
    """Forward + backward of ``module``. Returns a dict name -> tensor (float64, CPU) with the
    output (padded, time-major), final states and the gradients of input, hx and every
    parameter, for a random linear functional of all outputs.

    ``rounded_to``: a dtype the input, hx and the functional's weights (the output gradients)
    are rounded to before being cast to ``dtype`` -- to run a float32 module on exactly the
    values a half-precision run sees (see interface_error)."""

    def cast(t):
        return (t if rounded_to is None else t.to(rounded_to)).to(device, dtype)

    module.zero_grad(set_to_none=True)
    xd = cast(x).requires_grad_(True)
    inp = xd
    if case.unbatched:
        inp = xd[:, 0]
    elif case.packed:
        inp = pack_padded_sequence(xd, lengths, enforce_sorted=False)
    elif case.batch_first:
        inp = xd.transpose(0, 1)
    hxd = None
    if hx is not None:
        states = hx if isinstance(hx, tuple) else (hx,)
        states = [cast(s).requires_grad_(True) for s in states]
        if case.unbatched:
            states = [s[:, 0] for s in states]
        hxd = tuple(states) if case.cell == "lstm" else states[0]
    out, st = module(inp, hxd)
    if case.packed:
        out, _ = pad_packed_sequence(out, total_length=case.T)
    elif case.unbatched:
        out = out.unsqueeze(1)
    elif case.batch_first:
        out = out.transpose(0, 1)
    st = st if isinstance(st, tuple) else (st,)
    if case.unbatched:
        st = tuple(s.unsqueeze(1) for s in st)
    g = torch.Generator().manual_seed(gen_seed)
    loss = 0
    res = {"out": out}
    for name, t in [("out", out)] + [(f"state{i}", s) for i, s in enumerate(st)]:
        w = cast(torch.randn(t.shape, generator=g, dtype=torch.float64))
        loss = loss + (t * w).float().sum()
        res[name] = t
    wrt = {"dx": xd}
    if hx is not None:
        for i, s in enumerate(states):
            wrt[f"dhx{i}"] = s
    for n, p in module.named_parameters():
        wrt[f"d{n}"] = p
    grads = torch.autograd.grad(loss, list(wrt.values()), allow_unused=False)
    res.update(zip(wrt, grads))
    if case.unbatched:  # only batch row 0 took part
        res["dx"] = res["dx"][:, :1]
        for k in [k for k in res if k.startswith("dhx")]:
            res[k] = res[k][:, :1]
    return {k: v.detach().to("cpu", torch.float64) for k, v in res.items()}


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    """||a - ref|| / ||ref|| (NaN never passes: it propagates into the result)."""
    den = ref.norm().item()
    num = (a - ref).norm().item()
    return num / den if den > 0 else num


# Unit roundoff (half the gap between 1 and the next value) of each floating dtype.
def unit_roundoff(dtype) -> float:
    return torch.finfo(dtype).eps / 2


def low_precision_bound(module, case: Case, x, lengths, hx, dtype, device, ref) -> dict:
    """Per result name, the largest relative error (against the float64 ``ref``) that a correct
    ``dtype`` implementation may have -- a bound that does not depend on which kernel torch (or
    anyone) runs in ``dtype`` on this CPU / GPU.

    Derivation. A ``dtype`` implementation sees its inputs x, hx, weights and the output
    gradients rounded to ``dtype`` (``module``'s weights already are), and returns results
    rounded to ``dtype``. Call e_in the error, against ``ref``, of the same maths in float32 on
    exactly those rounded inputs (``module`` cast to float32, run with rounded_to=dtype): the
    effect of the input rounding, identical for every implementation (float32's own rounding
    in it is ~1e-7). A correct implementation then
      - accumulates in float32 (the project's rule): counted by taking e_in as at least one
        float32 epsilon;
      - rounds values that the next computation consumes as inputs to ``dtype`` (a layer's
        output feeding the next layer or direction, the gradient flowing back into it): each
        such rounding is a relative perturbation <= u of an input, like the rounding of x that
        e_in measures; allowed: as much again as e_in (factor 2, the same 2x that float32 gets
        against torch's own float32 module);
      - rounds every result once to ``dtype``: relative error <= u per element, so <= u in norm
        (u = unit roundoff of ``dtype``; 0 for float32's own rounding, already part of e_in).
    bound = 2 * (e_in + eps32) + u.  For float32, e_in is torch's own float32 error, so this is
    the rule "2x torch's error" plus 2^-24.
    """
    f32 = module.to(device, torch.float32)
    lo = run_module(f32, case, x, lengths, hx, torch.float32, device, rounded_to=dtype)
    eps32 = torch.finfo(torch.float32).eps
    u = unit_roundoff(dtype) if dtype != torch.float32 else 0.0
    return {k: 2 * (rel_err(lo[k], ref[k]) + eps32) + u for k in ref}
