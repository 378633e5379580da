"""convert(model) / revert(model): swap torch's recurrent modules for fused_rnn's and back, in
place, sharing the very same parameter tensors."""

from __future__ import annotations

from torch import nn

from . import modules

__all__ = ["convert", "revert", "torch_class"]

# torch class -> ours. Subclasses of torch's classes that are not ours are left alone: they
# may override forward, and swapping them would silently drop that behaviour.
_SWAP = {
    nn.LSTM: modules.LSTM,
    nn.GRU: modules.GRU,
    nn.RNN: modules.RNN,
    nn.LSTMCell: modules.LSTMCell,
    nn.GRUCell: modules.GRUCell,
    nn.RNNCell: modules.RNNCell,
}


# ours -> torch class: revert's table, built from _SWAP so every pair added there is covered.
_UNSWAP = {ours: theirs for theirs, ours in _SWAP.items()}


def torch_class(cls: type[nn.Module]) -> type[nn.Module]:
    """The torch.nn class a fused_rnn module class replaces (e.g. fused_rnn.LSTM -> nn.LSTM)."""
    return _UNSWAP[cls]


def _swapped_copy(old: nn.Module, cls: type[nn.Module]) -> nn.Module:
    new = cls.__new__(cls)
    # Share the state (parameters, buffers, hooks, training flag, cuDNN flat-weight bookkeeping)
    # with the old module rather than re-creating it: parameters stay the very same tensors,
    # so optimisers that already hold them keep working, and weights are exact by construction.
    new.__dict__.update(old.__dict__)
    for key in ("_parameters", "_buffers", "_modules"):
        new.__dict__[key] = type(old.__dict__[key])(old.__dict__[key])
    return new


def _fused_copy(old: nn.Module, backend: str) -> nn.Module:
    new = _swapped_copy(old, _SWAP[type(old)])
    new.backend = backend
    return new


def _torch_copy(old: nn.Module) -> nn.Module:
    new = _swapped_copy(old, _UNSWAP[type(old)])
    new.__dict__.pop("backend", None)
    return new


def convert(model: nn.Module, backend: str = "auto") -> nn.Module:
    """Replace every ``nn.LSTM``, ``nn.GRU``, ``nn.RNN``, ``nn.LSTMCell``, ``nn.GRUCell`` and
    ``nn.RNNCell`` inside ``model``
    (at any depth, in ModuleList / Sequential / dicts too) with the fused_rnn equivalent, in
    place, and return ``model``. The new modules use the same parameter tensors, so outputs are
    unchanged up to the backend's rounding and optimisers need not be rebuilt.

    ``model`` itself may be one of those modules; then the converted module is returned (the
    caller must use the return value).
    """
    if type(model) in _SWAP:
        return _fused_copy(model, backend)
    for name, child in list(model.named_children()):
        if type(child) in _SWAP:
            setattr(model, name, _fused_copy(child, backend))
        else:
            convert(child, backend)
    return model


def revert(model: nn.Module) -> nn.Module:
    """The inverse of :func:`convert`: replace every fused_rnn module inside ``model`` (at any
    depth) with its torch.nn class (``fused_rnn.LSTM`` -> ``nn.LSTM``, ...), in place, and return
    ``model``. The torch modules use the same parameter tensors (optimisers keep working), so
    ``revert(convert(m))`` gives back ``m``'s module types with its very parameters; use it to
    hand a model to code that needs torch's own classes (``isinstance(m, nn.LSTM)``, cuDNN).

    ``model`` itself may be a fused module; then the torch module is returned (use the return
    value).
    """
    if type(model) in _UNSWAP:
        return _torch_copy(model)
    for name, child in list(model.named_children()):
        if type(child) in _UNSWAP:
            setattr(model, name, _torch_copy(child))
        else:
            revert(child)
    return model
