"""Triton backend of fused_rnn: fused LSTM/GRU recurrences (see docs/triton_backend.md).

Importing this package imports triton and defines the kernels; set TRITON_INTERPRET=1 before
that to run them in Triton's CPU interpreter. Without triton, ``TritonBackend()`` builds a
backend whose ``available()`` says so.
"""

try:
    import triton  # noqa: F401
except ImportError as e:
    from functools import partial

    from .missing import MissingTritonBackend

    TritonBackend = partial(
        MissingTritonBackend, f"triton is not installed ({e}); pip install triton==3.6.0"
    )
else:
    from .backend import TritonBackend

__all__ = ["TritonBackend"]
