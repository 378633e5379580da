"""fused_rnn: fused LSTM, GRU and RNN kernels for PyTorch, as drop-in nn.Modules.

    import fused_rnn
    lstm = fused_rnn.LSTM(128, 256, num_layers=2, batch_first=True)   # like nn.LSTM
    model = fused_rnn.convert(model)          # swap nn.LSTM/GRU/RNN (and cells) in place
    model = fused_rnn.revert(model)           # and back

See fused_rnn.backends for the backends and how one is chosen.
"""

import os
import warnings

from .backends import (
    AUTO_ORDER,
    BackendUnavailableError,
    available_backends,
    backend_status,
    register_backend,
    use_backend,
)
from .convert import convert, revert
from .cpu_policy import explain
from .export import OnnxExportError
from .functional import gru, lstm, rnn
from .modules import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell
from .ops import torch_mismatch
from .serialization import register_safe_globals

# Whole-model checkpoints load with torch.load(weights_only=True): see fused_rnn.serialization.
register_safe_globals()

# An extension compiled against another torch is refused when a compiled backend is asked for
# (fused_rnn.ops.load_library); say so at import too, before any undefined-symbol surprise.
if os.environ.get("FUSED_RNN_NO_EXT", "") != "1" and torch_mismatch() is not None:
    warnings.warn(torch_mismatch(), RuntimeWarning, stacklevel=2)

__version__ = "0.1.0"

__all__ = [
    "AUTO_ORDER",
    "GRU",
    "LSTM",
    "BackendUnavailableError",
    "GRUCell",
    "LSTMCell",
    "OnnxExportError",
    "RNN",
    "RNNCell",
    "available_backends",
    "backend_status",
    "convert",
    "explain",
    "gru",
    "lstm",
    "rnn",
    "register_backend",
    "revert",
    "use_backend",
]
