"""The backend object registered when triton cannot be imported: it only says why."""

from __future__ import annotations


class MissingTritonBackend:
    """Stands in for TritonBackend without triton: available() gives the reason, so the
    registry reports it and ``backend="auto"`` moves on."""

    name = "triton"

    def __init__(self, reason: str):
        self.reason = reason

    def available(self) -> str | None:
        return self.reason

    def supports(self, cell, x, has_proj) -> str | None:
        return self.reason

    def _raise(self, *args, **kwargs):
        raise RuntimeError(f"fused_rnn backend 'triton' is not available: {self.reason}")

    fwd = bwd = _raise
