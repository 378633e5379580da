"""ONNX export: fused_rnn's modules export as torch.nn's do, to the standard ONNX operators.

While ``torch.onnx.export`` runs (either exporter: ``dynamo=True``, the default since torch 2.9,
or the TorchScript one, ``dynamo=False``), each fused module's forward hands over to its torch.nn
class's forward on the module's own parameters (``nn.LSTM.forward(self, ...)``). That records
torch's own RNN ops (``aten::lstm`` / ``gru`` / ``rnn_tanh`` / ``rnn_relu``, ``lstm_cell`` ...),
which the exporters turn into ONNX ``LSTM`` / ``GRU`` / ``RNN`` (or, where the exporter has no
such mapping, an equivalent graph of standard operators): the exported model is exactly the one
the same model with torch.nn modules gives. Outside ONNX export nothing changes; in particular
``torch.export.export`` keeps the fused_rnn custom ops in its graph.

Not exportable to ONNX (a clear error says what to do instead):
  - PackedSequence input: no exporter maps it to ONNX's ``sequence_lens``;
  - LSTM ``proj_size > 0``: ONNX's LSTM operator has no output projection (for an ``nn.LSTM``
    torch's dynamo exporter writes a graph that onnxruntime rejects when run; we refuse early).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

__all__ = ["OnnxExportError", "exporting_to_onnx", "torch_forward"]


class OnnxExportError(RuntimeError):
    """A fused_rnn module was asked to export something ONNX has no operator for."""


def exporting_to_onnx() -> bool:
    """True while ``torch.onnx.export`` (either exporter) traces the model.

    Under Dynamo it reads the dynamo exporter's flag itself: Dynamo folds
    ``torch.onnx.is_in_onnx_export()`` to False, and that exporter falls back to tracing with
    Dynamo (``torch.export.export(strict=True)``) when the non-strict trace fails, which would
    then record the fused ops (and, for proj_size, bypass the error below). Dynamo reads the
    flag's real value and guards on it. (The TorchScript exporter never runs under Dynamo.)
    """
    if torch.compiler.is_compiling():
        try:
            from torch.onnx._internal.exporter import _flags
        except ImportError:  # another torch layout: no dynamo exporter to look for
            return False
        return _flags._is_onnx_exporting
    return torch.onnx.is_in_onnx_export()


def _torch_class(module: nn.Module) -> type[nn.Module]:
    from .convert import torch_class  # late: convert imports modules, which import us

    return torch_class(type(module))


def torch_forward(module: nn.Module, input, hx=None):
    """Run ``module`` (a fused_rnn module) through its torch.nn class's forward, for export.

    Same arguments and results as the module's forward: ``input`` (T, B, I) / (B, T, I) /
    unbatched (T, I), or (B, I) / (I,) for the cells; ``hx`` as for torch's module.
    """
    name = f"fused_rnn.{type(module).__name__}"
    if isinstance(input, PackedSequence):
        raise OnnxExportError(
            f"{name}: ONNX export of a PackedSequence input is not supported (torch's exporters "
            "have no mapping to ONNX's sequence_lens). Export the model with a padded tensor "
            "input instead: outputs past each sequence's end are then computed on the padding, "
            "so mask them after the model (or export per length)."
        )
    if getattr(module, "proj_size", 0) > 0:
        raise OnnxExportError(
            f"{name}: ONNX export of an LSTM with proj_size={module.proj_size} is not supported: "
            "the ONNX LSTM operator has no output projection. Export a model without proj_size, "
            "or use torch.export.export (its graph keeps fused_rnn's ops) for other runtimes."
        )
    return _torch_class(module).forward(module, input, hx)
