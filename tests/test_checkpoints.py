"""Checkpoints and revert: whole-model torch.save / torch.load(weights_only=True) with a
program's allow-list of torch.nn classes (the word-language-model flow), state_dict both ways
through files, and revert(convert(m)) giving back torch's modules on the same tensors."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn
from torch.utils._pytree import tree_leaves

import fused_rnn
from fused_rnn.serialization import safe_globals

RNN_TYPES = ["LSTM", "GRU"] + (["RNN_TANH", "RNN_RELU"] if hasattr(fused_rnn, "RNN") else [])


class RNNModel(nn.Module):
    """The shape of PyTorch's word_language_model example model: encoder, recurrent module,
    decoder, dropout; the recurrent module is picked by name as the example does."""

    def __init__(self, rnn_type: str, ntoken: int = 13, ninp: int = 6, nhid: int = 8):
        super().__init__()
        self.drop = nn.Dropout(0.2)
        self.encoder = nn.Embedding(ntoken, ninp)
        if rnn_type in ("LSTM", "GRU"):
            self.rnn = getattr(nn, rnn_type)(ninp, nhid, 2, dropout=0.2)
        else:
            nonlinearity = {"RNN_TANH": "tanh", "RNN_RELU": "relu"}[rnn_type]
            self.rnn = nn.RNN(ninp, nhid, 2, nonlinearity=nonlinearity, dropout=0.2)
        self.decoder = nn.Linear(nhid, ntoken)

    def forward(self, tokens, hidden=None):
        out, hidden = self.rnn(self.drop(self.encoder(tokens)), hidden)
        return self.decoder(self.drop(out)), hidden


# What the example program allow-lists: its own class and the torch.nn classes it uses.
ALLOWED = [RNNModel, nn.Dropout, nn.Embedding, nn.Linear, nn.LSTM, nn.GRU, nn.RNN]


def _save_load(obj, allowed=()):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    with torch.serialization.safe_globals(list(allowed)):
        return torch.load(buf, weights_only=True)


def _train(model: nn.Module, steps: int = 2) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    for _ in range(steps):
        tokens = torch.randint(0, 13, (5, 3))
        out, _ = model(tokens)
        loss = nn.functional.cross_entropy(out.reshape(-1, 13), tokens.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("rnn_type", RNN_TYPES)
def test_whole_model_checkpoint_loads_with_weights_only(rnn_type):
    """Train, torch.save(model), torch.load(weights_only=True) with the program's allow-list:
    what works for the torch.nn model must work after one fused_rnn.convert line."""
    torch.manual_seed(0)
    plain = RNNModel(rnn_type)
    assert type(_save_load(plain, ALLOWED).rnn) is type(plain.rnn)  # the control
    model = fused_rnn.convert(RNNModel(rnn_type), backend="reference")
    _train(model)
    loaded = _save_load(model, ALLOWED)
    assert type(loaded.rnn) is type(model.rnn) and loaded.rnn.backend == "reference"
    loaded.rnn.flatten_parameters()  # the example calls it after loading
    for (na, a), (nb, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert na == nb and torch.equal(a, b)
    model.eval(), loaded.eval()
    tokens = torch.randint(0, 13, (5, 3))
    with torch.no_grad():
        for a, b in zip(model(tokens)[0], loaded(tokens)[0]):
            assert torch.equal(a, b)


@pytest.mark.parametrize("cls", safe_globals(), ids=lambda c: c.__name__)
def test_every_module_class_is_a_safe_global(cls):
    assert cls in torch.serialization.get_safe_globals()
    is_cell = issubclass(cls, nn.RNNCellBase)
    m = cls(3, 4, backend="reference")
    loaded = _save_load(m)  # nothing else needs allowing for a bare module
    assert type(loaded) is cls and loaded.backend == "reference"
    x = torch.randn(2, 3) if is_cell else torch.randn(4, 2, 3)
    with torch.no_grad():
        want, got = tree_leaves(m(x)), tree_leaves(loaded(x))
    assert len(want) == len(got)
    for a, b in zip(want, got):
        assert torch.equal(a, b)


def test_safe_globals_cover_the_public_modules():
    names = {c.__name__ for c in safe_globals()}
    assert {"LSTM", "GRU", "LSTMCell", "GRUCell"} <= names
    if hasattr(fused_rnn, "RNN"):
        assert "RNN" in names


@pytest.mark.parametrize(
    "theirs_cls,ours_cls",
    [(nn.LSTM, fused_rnn.LSTM), (nn.GRU, fused_rnn.GRU), (nn.LSTMCell, fused_rnn.LSTMCell)],
    ids=["lstm", "gru", "lstmcell"],
)
def test_state_dict_checkpoints_both_ways(theirs_cls, ours_cls):
    """state_dict files (the other common checkpoint) load both ways with weights_only=True."""
    theirs, ours = theirs_cls(3, 5), ours_cls(3, 5)
    ours.load_state_dict(_save_load(theirs.state_dict()))
    fresh = theirs_cls(3, 5)
    fresh.load_state_dict(_save_load(ours.state_dict()))
    for a, b, c in zip(theirs.parameters(), ours.parameters(), fresh.parameters()):
        assert torch.equal(a, b) and torch.equal(b, c)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnns = nn.ModuleList([nn.LSTM(3, 4, bidirectional=True), nn.GRU(8, 4)])
        self.cells = nn.ModuleDict({"l": nn.LSTMCell(4, 4), "g": nn.GRUCell(4, 4)})

    def forward(self, x):
        y, _ = self.rnns[0](x)
        y, h = self.rnns[1](y)
        h2, _ = self.cells["l"](y[-1])
        return self.cells["g"](h2, h[0])


def test_revert_round_trips_on_the_same_tensors():
    torch.manual_seed(0)
    model = _Net()
    types = [type(m) for m in model.modules()]
    params = dict(model.named_parameters())
    x = torch.randn(5, 2, 3)
    want = model(x)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    assert fused_rnn.convert(model, backend="reference") is model
    assert fused_rnn.revert(model) is model
    assert [type(m) for m in model.modules()] == types
    assert isinstance(model.rnns[0], nn.LSTM) and isinstance(model.cells["g"], nn.GRUCell)
    assert not any(hasattr(m, "backend") for m in model.modules())
    assert dict(model.named_parameters()) == params  # the very same Parameter objects
    assert torch.equal(model(x), want)
    model(x).sum().backward()  # the optimiser built before both swaps still steps them
    before = params["rnns.0.weight_hh_l0"].clone()
    opt.step()
    assert not torch.equal(params["rnns.0.weight_hh_l0"], before)


def test_revert_a_bare_module_and_leaves_torch_modules_alone():
    ours = fused_rnn.GRU(3, 4)
    theirs = fused_rnn.revert(ours)
    assert type(theirs) is nn.GRU and theirs.weight_ih_l0 is ours.weight_ih_l0
    plain = nn.LSTM(3, 4)
    assert fused_rnn.revert(plain) is plain and type(plain) is nn.LSTM
    x = torch.randn(4, 2, 3)
    torch.testing.assert_close(theirs(x)[0], ours(x)[0], atol=1e-6, rtol=1e-5)
