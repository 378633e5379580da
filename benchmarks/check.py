"""Inputs, one checked call, and the correctness verdict against a float64 oracle.

Every provider's outputs (y, h_n, c_n) and gradients (input, initial states, every parameter)
are compared against torch's module run in float64 on the same device with the same
(dtype-rounded) weights and inputs. The error measure of a tensor is
``max|a - ref| / max|ref|``; a provider passes when, for every tensor, its error is at most
``max(2 * torch's own error, FLOOR[dtype])`` -- the same "no worse than 2x nn.LSTM in the same
dtype" bar as the parity target in docs/TARGETS.md. The floor exists because torch itself can
be nearly exact (a couple of ulps) and another correct summation order may then be a few times
off; the floors are still far below the O(0.1-1) errors of a wrong gate, bias or time step.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from .cases import Case
from .lengths import sample_lengths

# Relative-error floors per dtype (see module docstring).
FLOOR = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}


@dataclass
class Inputs:
    """Tensors of one case. L = layers * directions, D = directions.

    x (T, B, I) in the case dtype, random normal (never zeros); lengths int64 (B,) on the CPU
    or None; h0 (L, B, H) and c0 (L, B, H) (c0 None for GRU); gy (T, B, D*H), ghn (L, B, H),
    gcn (L, B, H) or None: the upstream gradients used for every backward.
    """

    x: torch.Tensor
    lengths: torch.Tensor | None
    lengths_source: str
    h0: torch.Tensor
    c0: torch.Tensor | None
    gy: torch.Tensor
    ghn: torch.Tensor
    gcn: torch.Tensor | None

    def to(self, dtype: torch.dtype) -> Inputs:
        def cast(t):
            return None if t is None else t.to(dtype)

        return Inputs(
            cast(self.x),
            self.lengths,
            self.lengths_source,
            cast(self.h0),
            cast(self.c0),
            cast(self.gy),
            cast(self.ghn),
            cast(self.gcn),
        )


def torch_class(cell: str) -> tuple[type, dict]:
    """torch's module class of ``cell`` and the constructor kwargs that select it; fused_rnn's
    modules share the names and kwargs (``fused_rnn.RNN(..., nonlinearity=...)``)."""
    if cell.startswith("rnn_"):
        return nn.RNN, {"nonlinearity": cell[4:]}
    return {"lstm": nn.LSTM, "gru": nn.GRU}[cell], {}


def make_torch_module(case: Case, device: str, seed: int) -> nn.Module:
    """torch's nn.LSTM / nn.GRU / nn.RNN for the case (time-major), default init from ``seed``."""
    torch.manual_seed(seed)
    cls, kwargs = torch_class(case.cell)
    m = cls(case.I, case.H, num_layers=case.layers, bidirectional=case.bidirectional,
            **kwargs, **case.module_kwargs)  # fmt: skip
    return m.to(device=device, dtype=case.torch_dtype)


def make_inputs(case: Case, device: str, seed: int, data_dir=None) -> Inputs:
    """Random inputs for ``case``; varlen cases draw IMDB lengths and pad to the longest."""
    lengths, source = None, ""
    T = case.T
    if case.varlen:
        lengths, source = sample_lengths(case.B, case.T, seed, data_dir)
        T = int(lengths.max())
    # Drawn on the device itself: the largest GPU cases hold ~2e8 elements per tensor.
    g = torch.Generator(device=device).manual_seed(seed + 1)
    L = case.layers * (2 if case.bidirectional else 1)
    D = 2 if case.bidirectional else 1

    def randn(*shape):
        return torch.randn(*shape, generator=g, device=device).to(case.torch_dtype)

    lstm = case.cell == "lstm"
    return Inputs(
        x=randn(T, case.B, case.I),
        lengths=lengths,
        lengths_source=source,
        h0=randn(L, case.B, case.P),
        c0=randn(L, case.B, case.H) if lstm else None,
        gy=randn(T, case.B, D * case.P),
        ghn=randn(L, case.B, case.P),
        gcn=randn(L, case.B, case.H) if lstm else None,
    )


def feed(case: Case, inputs: Inputs, x: torch.Tensor):
    """What the module is called with: ``x`` (T, B, I) itself, or x packed with the case's
    lengths (a PackedSequence, enforce_sorted=False as users call it)."""
    if case.varlen == "packed":
        return pack_padded_sequence(x, inputs.lengths, enforce_sorted=False)
    return x


def state_of(h0, c0):
    """nn.LSTM's ``hx`` (h0, c0) or nn.GRU's h0; each (L, B, H)."""
    return h0 if c0 is None else (h0, c0)


def unpack(out, total_length: int) -> torch.Tensor:
    """The module's output as a padded (T, B, D*H) tensor (zeros past each length)."""
    if isinstance(out, PackedSequence):
        return pad_packed_sequence(out, total_length=total_length)[0]
    return out


def call_once(
    case: Case, fn, params: dict[str, nn.Parameter], inputs: Inputs, train: bool
) -> dict[str, torch.Tensor]:
    """Run ``fn(input, hx)`` once; with ``train`` also backward with the fixed upstream grads.

    Returns {"y": (T, B, D*H) padded with zeros past each length, "h_n": (L, B, H),
    ["c_n": (L, B, H)], and with train "grad_x": (T, B, I), "grad_h0": (L, B, H),
    ["grad_c0": (L, B, H)], "grad_<param name>": the parameter's shape, for every parameter};
    a gradient that never arrived is absent. ``params`` are cleared of gradients first.
    """
    x = inputs.x.detach().clone().requires_grad_(train)
    h0 = inputs.h0.detach().clone().requires_grad_(train)
    c0 = None if inputs.c0 is None else inputs.c0.detach().clone().requires_grad_(train)
    for p in params.values():
        p.grad = None
    with torch.set_grad_enabled(train):
        out, hn = fn(feed(case, inputs, x), state_of(h0, c0))
        y = unpack(out, x.shape[0])
        hn, cn = hn if c0 is not None else (hn, None)
        res = {"y": y.detach(), "h_n": hn.detach()}
        if cn is not None:
            res["c_n"] = cn.detach()
        if train:
            outs, grads = [y, hn], [inputs.gy, inputs.ghn]
            if cn is not None:
                outs.append(cn)
                grads.append(inputs.gcn)
            torch.autograd.backward(outs, grads)
            named = {"grad_x": x, "grad_h0": h0}
            if c0 is not None:
                named["grad_c0"] = c0
            named.update({f"grad_{n}": p for n, p in params.items()})
            for key, t in named.items():
                if t.grad is not None:
                    res[key] = t.grad.detach().clone()
    return res


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    """max|a - ref| / max|ref| in float64 (inf for a shape mismatch; NaN propagates)."""
    if a.shape != ref.shape:
        return float("inf")
    scale = ref.abs().max().clamp_min(1e-30)
    return float(((a.double() - ref).abs().max() / scale).item())


@dataclass
class Verdict:
    ok: bool
    worst: str  # the tensor with the largest error-to-tolerance ratio
    err: float
    tol: float

    def describe(self) -> str:
        return f"{self.worst}: err {self.err:.2e} vs tol {self.tol:.2e}"


class Oracle:
    """float64 results of torch's module for one case, and torch's own errors against them."""

    def __init__(self, case: Case, torch_module: nn.Module, inputs: Inputs):
        self.case = case
        ref = copy.deepcopy(torch_module).double()
        params = dict(ref.named_parameters())
        i64 = inputs.to(torch.float64)
        train_ref = call_once(case, ref, params, i64, train=True)
        # A no_grad forward computes the same values as a training forward in float64.
        infer_ref = {k: v for k, v in train_ref.items() if not k.startswith("grad_")}
        self.ref = {False: infer_ref, True: train_ref}
        base = dict(torch_module.named_parameters())
        # If torch itself cannot run the case (bf16 on an old cuDNN, say), providers are held
        # to the floors alone and the torch provider reports the error when it is run.
        self.torch_err = {}
        for t in (False, True):
            try:
                got = call_once(case, torch_module, base, inputs, train=t)
                self.torch_err[t] = self._errors(got, t)
            except Exception:  # noqa: BLE001
                self.torch_err[t] = {}

    def _errors(self, got: dict, train: bool) -> dict[str, float]:
        return {
            k: (rel_err(got[k], r) if k in got else float("inf"))
            for k, r in self.ref[train].items()
        }

    def verdict(self, got: dict, train: bool, param_grads: bool = True) -> Verdict:
        """Pass/fail of ``got`` (from :func:`call_once`); ``param_grads=False`` leaves out the
        parameter gradients (for providers whose parameters are not torch's)."""
        floor = FLOOR[self.case.torch_dtype]
        worst = None
        for key, err in self._errors(got, train).items():
            if (
                not param_grads
                and key not in ("grad_x", "grad_h0", "grad_c0")
                and key.startswith("grad_")
            ):
                continue
            tol = max(2 * self.torch_err[train].get(key, 0.0), floor)
            ratio = err / tol if err == err else float("inf")  # NaN counts as failing
            if worst is None or ratio > worst[0]:
                worst = (ratio, key, err, tol)
        ratio, key, err, tol = worst
        return Verdict(ratio <= 1.0, key, err, tol)
