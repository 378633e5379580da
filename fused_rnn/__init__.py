"""fused_rnn: fused LSTM and GRU kernels for PyTorch, as drop-in nn.Modules.

    import fused_rnn
    lstm = fused_rnn.LSTM(128, 256, num_layers=2, batch_first=True)   # like nn.LSTM
    model = fused_rnn.convert(model)                                   # swap nn.LSTM/GRU in place

See fused_rnn.backends for the backends and how one is chosen.
"""

from .backends import (
    AUTO_ORDER,
    BackendUnavailableError,
    available_backends,
    backend_status,
    register_backend,
    use_backend,
)
from .convert import convert
from .cpu_policy import explain
from .functional import gru, lstm
from .modules import GRU, LSTM, GRUCell, LSTMCell

__version__ = "0.1.0"

__all__ = [
    "AUTO_ORDER",
    "GRU",
    "LSTM",
    "BackendUnavailableError",
    "GRUCell",
    "LSTMCell",
    "available_backends",
    "backend_status",
    "convert",
    "explain",
    "gru",
    "lstm",
    "register_backend",
    "use_backend",
]
