"""convert(model): swap torch's recurrent modules for fused_rnn's, in place, weights exact."""

from __future__ import annotations

from torch import nn

from . import modules

__all__ = ["convert"]

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


def _fused_copy(old: nn.Module, backend: str) -> nn.Module:
    new = _SWAP[type(old)].__new__(_SWAP[type(old)])
    # Share the state (parameters, buffers, hooks, training flag, cuDNN flat-weight bookkeeping)
    # with the old module rather than re-creating it: parameters stay the very same tensors,
    # so optimisers that already hold them keep working, and weights are exact by construction.
    new.__dict__.update(old.__dict__)
    for key in ("_parameters", "_buffers", "_modules"):
        new.__dict__[key] = type(old.__dict__[key])(old.__dict__[key])
    new.backend = backend
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
