"""Whole-model checkpoints: fused_rnn's module classes on torch.serialization's safe-globals list.

``torch.save(model)`` pickles each module by its class; ``torch.load(..., weights_only=True)``
(torch's default since 2.6) rebuilds only classes on its allow-list. A program that allow-lists
torch.nn's classes and its own then fails on ``fused_rnn.modules.LSTM`` after ``convert``.
``import fused_rnn`` therefore adds our module classes to that list, so such a checkpoint
loads wherever the same model with torch.nn modules would.

Why this is sound: weights_only guards against code run *while loading*. For an allowed module
class the unpickler only creates the object (``object.__new__``) and sets its state through
``nn.Module.__setstate__`` plus ours, which only defaults the ``backend`` string; nothing in
the file can choose code to run. The state holds the same kinds of values as torch.nn's RNN
modules (tensors, ints, floats, bools, strings, lists, dicts), and the ``backend`` string is
checked against the registry at forward time (an unknown name raises). So allowing these
classes gives a checkpoint no power that allowing ``nn.LSTM`` does not.
"""

from __future__ import annotations

import torch
from torch import nn

from . import modules

__all__ = ["register_safe_globals", "safe_globals"]


def safe_globals() -> list[type]:
    """Every public nn.Module class of fused_rnn.modules (LSTM, GRU, the cells, and any added
    later), i.e. what a pickled fused model refers to by name."""
    classes = (getattr(modules, name) for name in modules.__all__)
    return [c for c in classes if isinstance(c, type) and issubclass(c, nn.Module)]


def register_safe_globals() -> None:
    """Add :func:`safe_globals` to ``torch.serialization``'s allow-list (idempotent)."""
    torch.serialization.add_safe_globals(safe_globals())
