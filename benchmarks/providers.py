"""Providers: the implementations being timed, each built from torch's module of a case.

A provider answers ``skip_reason(case, device)`` (None when it can run the case here) and
``build(torch_module, case)`` -> :class:`Built`: a callable with nn.LSTM's calling convention
(``fn(input, hx) -> (output, h_n | (h_n, c_n))``, time-major, input a tensor or a
PackedSequence) holding the same weights, and its parameters under torch's names (so that
gradients can be compared name by name).

Names: ``torch`` (nn.LSTM / nn.GRU: cuDNN on CUDA, oneDNN or native on CPU), ``torch_compile``
(torch.compile of that module), the fused_rnn backends (``reference``, ``cpp``, ``cuda``,
``triton``), ``flashrnn`` and ``haste`` when importable.
"""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .cases import Case
from .check import torch_class

FUSED_BACKENDS = ("reference", "cpp", "native", "auto", "cuda", "triton")


@dataclass
class Built:
    fn: Callable
    params: dict[str, nn.Parameter]
    note: str = ""
    param_grads: bool = True  # False: parameter gradients cannot be compared by name


class Provider:
    name: str = ""

    def skip_reason(self, case: Case, device: str) -> str | None:
        return None

    def build(self, torch_module: nn.Module, case: Case) -> Built:
        raise NotImplementedError


class TorchProvider(Provider):
    name = "torch"

    def build(self, torch_module, case):
        return Built(torch_module, dict(torch_module.named_parameters()))


class TorchCompileProvider(Provider):
    name = "torch_compile"

    def skip_reason(self, case, device):
        if case.varlen == "packed":
            # Dynamo does not trace through PackedSequence's RNN path; timing its graph-break
            # fallback would only time nn.LSTM again.
            return "torch.compile has no packed-sequence RNN path"
        return None

    def build(self, torch_module, case):
        m = copy.deepcopy(torch_module)
        return Built(torch.compile(m), dict(m.named_parameters()))


class FusedProvider(Provider):
    """fused_rnn.LSTM / GRU / RNN pinned to one backend, loaded from torch's state dict."""

    def __init__(self, backend: str):
        self.name = backend

    def skip_reason(self, case, device):
        try:
            import fused_rnn
            from fused_rnn.backends import backend_status
        except ImportError as e:
            return f"fused_rnn not importable: {e}"
        name = torch_class(case.cell)[0].__name__
        if not hasattr(fused_rnn, name):
            return f"fused_rnn has no {name} module yet"
        if self.name == "auto":
            return None
        why = backend_status().get(self.name, "not registered")
        if why is not None:
            return why
        if device == "cpu" and self.name == "triton":
            return "triton runs on CPU only in the interpreter: correct but not a timing"
        return None

    def build(self, torch_module, case):
        import fused_rnn

        theirs, kwargs = torch_class(case.cell)
        m = getattr(fused_rnn, theirs.__name__)(
            case.I,
            case.H,
            num_layers=case.layers,
            bidirectional=case.bidirectional,
            backend=self.name,
            **kwargs,
            **case.module_kwargs,
        )
        m = m.to(device=next(torch_module.parameters()).device, dtype=case.torch_dtype)
        m.load_state_dict(torch_module.state_dict())
        note = ""
        if self.name == "auto":  # which backend auto runs, per mode, and why
            x = torch.empty(
                case.T, case.B, case.I, dtype=case.torch_dtype, device=next(m.parameters()).device
            )
            packed = case.varlen == "packed"
            with torch.no_grad():
                infer = fused_rnn.explain(case.cell, x, packed=packed)
            train = fused_rnn.explain(case.cell, x, packed=packed)
            note = f"infer {infer}; train {train}"
        return Built(m, dict(m.named_parameters()), note=note)


def _importable(mod: str) -> bool:
    try:
        return importlib.util.find_spec(mod) is not None
    except (ImportError, ValueError):
        return False


class FlashRNNProvider(Provider):
    """NX-AI's FlashRNN (``flashrnn`` package, fused CUDA kernel), LSTM only.

    FlashRNN takes the input projection already applied (Wx), so this adapter computes
    ``x @ W_ih^T + b_ih`` with one matmul and times it together with the recurrence: the
    figures are comparable with nn.LSTM's, which include the projection. Weights are
    torch's parameters reshaped on every call (differentiable, so gradients land on them).
    Its GRU is a different cell from nn.GRU (other gate equations), so GRU is skipped.
    """

    name = "flashrnn"

    def skip_reason(self, case, device):
        if not _importable("flashrnn"):
            return "flashrnn not installed (pip install flashrnn)"
        if device != "cuda":
            return "flashrnn needs CUDA"
        if case.cell != "lstm":
            return "flashrnn's GRU is not nn.GRU's cell"
        if case.layers > 1 or case.bidirectional or case.varlen == "packed":
            return "flashrnn runs one unidirectional layer on dense input"
        if "anchor" not in case.tags or case.dtype != "bfloat16":
            # It compiles its CUDA kernels with nvcc on first use of each configuration (tens
            # of seconds each): one configuration fits the GPU grid's budget.
            return "flashrnn (JIT-compiled per shape) runs on the bf16 anchor shape only"
        return None

    def build(self, torch_module, case):
        from flashrnn import flashrnn

        H = case.H
        m = torch_module
        dtype = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}[
            case.torch_dtype
        ]

        def fn(x, hx):
            h0, c0 = hx
            T, B, _ = x.shape
            wx = torch.addmm(m.bias_ih_l0, x.reshape(T * B, -1), m.weight_ih_l0.t())
            wx = wx.view(T, B, 4, 1, H).transpose(0, 1)  # (B, T, gates, heads=1, H)
            # FlashRNN's R is (gates, heads, D, P): row d of gate g reads the previous h (P), as
            # in W_hh's gate block, so it is W_hh reshaped, not transposed.
            r = m.weight_hh_l0.view(4, 1, H, H)
            b = m.bias_hh_l0.view(4, 1, H)
            states = torch.stack([h0[0], c0[0]]).view(2, B, 1, 1, H)
            h, last = flashrnn(
                wx.contiguous(),
                r.contiguous(),
                b.contiguous(),
                states=states,
                function="lstm",
                backend="cuda_fused",
                dtype=dtype,
            )
            # h: (states, B, T, heads, H); state 0 is h, state 1 is c.
            y = h[0].reshape(B, T, H).transpose(0, 1)
            hn = last[0].reshape(1, B, H)
            cn = last[1].reshape(1, B, H)
            return y, (hn, cn)

        return Built(
            fn, dict(m.named_parameters()), note="includes the input projection (one addmm)"
        )


class HasteProvider(Provider):
    """lmnt-com/haste (``haste_pytorch``): LSTM and GRU loaded with ``from_native_weights``."""

    name = "haste"

    def skip_reason(self, case, device):
        if not _importable("haste_pytorch"):
            return "haste_pytorch not installed (its 2020 source release rarely builds)"
        if device != "cuda":
            return "haste needs CUDA"
        if case.cell not in ("lstm", "gru"):
            return "haste has LSTM and GRU only"
        if case.proj:
            return "haste has no LSTM projection"
        if case.layers > 1 or case.bidirectional or case.varlen == "packed":
            return "haste runs one unidirectional layer on dense input"
        return None

    def build(self, torch_module, case):
        import haste_pytorch as haste

        cls = haste.LSTM if case.cell == "lstm" else haste.GRU
        m = cls(case.I, case.H, batch_first=False).to(
            device=next(torch_module.parameters()).device, dtype=case.torch_dtype
        )
        t = torch_module
        m.from_native_weights(t.weight_ih_l0, t.weight_hh_l0, t.bias_ih_l0, t.bias_hh_l0)
        # haste's parameters have their own names and layout, so the check compares outputs
        # and input / state gradients only.
        return Built(
            lambda x, hx: m(x, hx),
            dict(m.named_parameters()),
            note="parameter gradients not compared",
            param_grads=False,
        )


def all_providers() -> list[Provider]:
    return [
        TorchProvider(),
        TorchCompileProvider(),
        *(FusedProvider(b) for b in FUSED_BACKENDS),
        FlashRNNProvider(),
        HasteProvider(),
    ]


def select(names: list[str] | None) -> list[Provider]:
    """Providers by name (None: all); unknown names raise ValueError listing the known ones."""
    provs = all_providers()
    if names is None:
        return provs
    known = {p.name: p for p in provs}
    bad = [n for n in names if n not in known]
    if bad:
        raise ValueError(f"unknown provider(s) {bad}; known: {', '.join(known)}")
    if "torch" not in names:
        names = ["torch", *names]  # every ratio is against torch, so it always runs
    return [known[n] for n in names]
