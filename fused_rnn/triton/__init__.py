"""Triton backend of fused_rnn: fused LSTM/GRU recurrences (see docs/triton_backend.md).

Importing this package imports triton and defines the kernels; set TRITON_INTERPRET=1 before
that to run them in Triton's CPU interpreter.
"""

from .backend import TritonBackend

__all__ = ["TritonBackend"]
