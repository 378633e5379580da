"""The nn.Module surface: what torch's own tests check of nn.LSTM / GRU / LSTMCell / GRUCell
behaviour must hold for ours (state_dict, repr, pickling, dropout, cells, errors, convert)."""

from __future__ import annotations

import io
import pickle

import pytest
import torch
from torch import nn

import fused_rnn

PAIRS = [(nn.LSTM, fused_rnn.LSTM), (nn.GRU, fused_rnn.GRU), (nn.RNN, fused_rnn.RNN)]
CELL_PAIRS = [
    (nn.LSTMCell, fused_rnn.LSTMCell),
    (nn.GRUCell, fused_rnn.GRUCell),
    (nn.RNNCell, fused_rnn.RNNCell),
]
KW = [
    dict(),
    dict(num_layers=2, bidirectional=True, dropout=0.3, batch_first=True),
    dict(bias=False),
]


@pytest.mark.parametrize("kw", KW, ids=lambda k: "-".join(map(str, k.items())) or "default")
@pytest.mark.parametrize("theirs_cls,ours_cls", PAIRS, ids=["lstm", "gru", "rnn"])
def test_same_parameters_and_state_dict_both_ways(theirs_cls, ours_cls, kw):
    theirs, ours = theirs_cls(5, 7, **kw), ours_cls(5, 7, **kw)
    assert isinstance(ours, nn.RNNBase) and type(ours).__name__ == theirs_cls.__name__
    assert [(n, p.shape) for n, p in theirs.named_parameters()] == [
        (n, p.shape) for n, p in ours.named_parameters()
    ]
    assert list(theirs.state_dict()) == list(ours.state_dict())
    ours.load_state_dict(theirs.state_dict())
    for (_, a), (_, b) in zip(theirs.state_dict().items(), ours.state_dict().items()):
        assert torch.equal(a, b)
    fresh = theirs_cls(5, 7, **kw)
    fresh.load_state_dict(ours.state_dict())  # and back, strict
    for a, b in zip(fresh.parameters(), ours.parameters()):
        assert torch.equal(a, b)


def test_gru_rejects_proj_size_like_torch():
    _raises_like_torch(lambda: nn.GRU(3, 4, proj_size=2), lambda: fused_rnn.GRU(3, 4, proj_size=2))


def test_proj_size_parameters():
    theirs, ours = (
        nn.LSTM(5, 7, proj_size=3, num_layers=2),
        fused_rnn.LSTM(5, 7, proj_size=3, num_layers=2),
    )
    assert [(n, p.shape) for n, p in theirs.named_parameters()] == [
        (n, p.shape) for n, p in ours.named_parameters()
    ]


def test_initialisation_matches_torch():
    torch.manual_seed(3)
    theirs = nn.LSTM(5, 7, num_layers=2)
    torch.manual_seed(3)
    ours = fused_rnn.LSTM(5, 7, num_layers=2)
    for a, b in zip(theirs.parameters(), ours.parameters()):
        assert torch.equal(a, b)


def test_repr_like_torch_prefixed_with_backend():
    """torch's repr with the package prefixed and the backend appended: a printed model shows
    that convert() ran and with which backend."""
    assert repr(fused_rnn.LSTM(5, 7, num_layers=2)) == (
        "fused_rnn.LSTM(5, 7, num_layers=2, backend='auto')"
    )
    assert repr(fused_rnn.GRU(5, 7, batch_first=True)) == (
        f"fused_rnn.{repr(nn.GRU(5, 7, batch_first=True))[:-1]}, backend='auto')"
    )
    assert repr(fused_rnn.LSTMCell(5, 7)) == "fused_rnn.LSTMCell(5, 7, backend='auto')"
    assert repr(fused_rnn.LSTM(5, 7, backend="reference")) == (
        "fused_rnn.LSTM(5, 7, backend='reference')"
    )
    model = nn.Sequential(nn.LSTM(5, 7), nn.Linear(7, 2))
    before = repr(model)
    assert "fused_rnn" not in before
    assert repr(fused_rnn.convert(model, backend="cpp")) == before.replace(
        "(0): LSTM(5, 7)", "(0): fused_rnn.LSTM(5, 7, backend='cpp')"
    )
    assert repr(fused_rnn.revert(model)) == before
    rnn = nn.RNN(5, 7, 2, "relu")
    assert repr(fused_rnn.RNN(5, 7, 2, "relu")) == f"fused_rnn.{repr(rnn)[:-1]}, backend='auto')"
    cell = nn.RNNCell(5, 7, nonlinearity="relu")
    assert repr(fused_rnn.RNNCell(5, 7, nonlinearity="relu")) == (
        f"fused_rnn.{repr(cell)[:-1]}, backend='auto')"
    )


@pytest.mark.parametrize(
    "cls",
    [
        fused_rnn.LSTM,
        fused_rnn.GRU,
        fused_rnn.RNN,
        fused_rnn.LSTMCell,
        fused_rnn.GRUCell,
        fused_rnn.RNNCell,
    ],
)
def test_pickle_and_torch_save(cls):
    m = cls(4, 6, backend="reference")
    seq = (fused_rnn.LSTM, fused_rnn.GRU, fused_rnn.RNN)
    x = torch.randn(3, 2, 4) if cls in seq else torch.randn(2, 4)
    want = m(x)
    for clone in (pickle.loads(pickle.dumps(m)), _torch_roundtrip(m)):
        assert type(clone) is cls and clone.backend == "reference"
        got = clone(x)
        for a, b in zip(_flat(want), _flat(got)):
            assert torch.equal(a, b)


def _torch_roundtrip(m):
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


def _flat(out):
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for o in out for t in _flat(o)]


def test_flatten_parameters_accepted():
    m = fused_rnn.LSTM(4, 6)
    m.flatten_parameters()
    m(torch.randn(3, 2, 4))


@pytest.mark.parametrize("theirs_cls,ours_cls", PAIRS, ids=["lstm", "gru", "rnn"])
def test_eval_mode_ignores_dropout(theirs_cls, ours_cls):
    theirs = theirs_cls(4, 6, num_layers=3, dropout=0.5).eval()
    ours = ours_cls(4, 6, num_layers=3, dropout=0.5).eval()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(5, 2, 4)
    torch.testing.assert_close(ours(x)[0], theirs(x)[0])


def test_train_mode_dropout_between_layers_only():
    """With p=0.5 between two layers, layer 2 sees about half its inputs zeroed and the rest
    scaled by 2: compare the output distribution to the functional with a known mask."""
    m = fused_rnn.LSTM(8, 64, num_layers=2, dropout=0.5).train()
    x = torch.randn(4, 16, 8)
    # same seed -> same mask -> identical outputs; different seed -> different outputs
    torch.manual_seed(1)
    a = m(x)[0]
    torch.manual_seed(1)
    b = m(x)[0]
    torch.manual_seed(2)
    c = m(x)[0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    # dropout acts on layer 1's output only: a 1-layer model is deterministic in train mode
    one = fused_rnn.LSTM(8, 64, num_layers=1, dropout=0.0).train()
    torch.manual_seed(5)
    d = one(x)[0]
    torch.manual_seed(6)
    assert torch.equal(d, one(x)[0])
    # statistics: feed layer 2 through the mask that F.dropout draws and compare
    torch.manual_seed(7)
    got = m(x)[0]
    torch.manual_seed(7)
    y1 = fused_rnn.functional.rnn_forward(
        "lstm", x, m._zero_state(x, 16), m._layer_weights()[:1], 1, 0.0, False, False, False
    )[0]
    mask = torch.nn.functional.dropout(torch.ones_like(y1), 0.5, True)
    frac_zero = (mask == 0).float().mean().item()
    assert 0.45 < frac_zero < 0.55
    want = fused_rnn.functional.rnn_forward(
        "lstm",
        y1 * mask,
        m._zero_state(x, 16),
        m._layer_weights()[1:],
        1,
        0.0,
        False,
        False,
        False,
    )[0]
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("theirs_cls,ours_cls", CELL_PAIRS, ids=["lstmcell", "grucell", "rnncell"])
@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("with_hx", [True, False])
def test_cells_match_torch(theirs_cls, ours_cls, batched, with_hx):
    theirs = theirs_cls(5, 7).double()
    ours = ours_cls(5, 7, backend="reference").double()
    ours.load_state_dict(theirs.state_dict())
    shape = (3, 5) if batched else (5,)
    x = torch.randn(*shape, dtype=torch.double, requires_grad=True)
    hshape = (3, 7) if batched else (7,)
    hx = None
    if with_hx:
        hs = [torch.randn(*hshape, dtype=torch.double, requires_grad=True) for _ in range(2)]
        hx = tuple(hs) if theirs_cls is nn.LSTMCell else hs[0]
    a, b = theirs(x, hx), ours(x, hx)
    for u, v in zip(_flat(a), _flat(b)):
        torch.testing.assert_close(v, u, rtol=1e-12, atol=1e-12)
    loss_a = sum((t * (i + 1)).sum() for i, t in enumerate(_flat(a)))
    loss_b = sum((t * (i + 1)).sum() for i, t in enumerate(_flat(b)))
    inputs = [x] + ([] if hx is None else _flat(hx))
    ga = torch.autograd.grad(loss_a, inputs + list(theirs.parameters()))
    gb = torch.autograd.grad(loss_b, inputs + list(ours.parameters()))
    for u, v in zip(ga, gb):
        torch.testing.assert_close(v, u, rtol=1e-12, atol=1e-12)


def test_zero_batch_like_torch():
    theirs, ours = nn.LSTM(3, 4), fused_rnn.LSTM(3, 4)
    ours.load_state_dict(theirs.state_dict())
    a, b = theirs(torch.randn(5, 0, 3)), ours(torch.randn(5, 0, 3))
    assert a[0].shape == b[0].shape and a[1][0].shape == b[1][0].shape
    c = fused_rnn.GRUCell(3, 4)(torch.randn(0, 3))
    assert c.shape == (0, 4)


def _raises_like_torch(theirs, ours, *args):
    with pytest.raises(Exception) as want:
        theirs(*args)
    with pytest.raises(type(want.value)) as got:
        ours(*args)
    assert str(got.value) == str(want.value)


BAD_SEQ_INPUTS = {
    "rank4": lambda: (torch.randn(2, 3, 4, 5),),
    "rank1": lambda: (torch.randn(5),),
    "input_size": lambda: (torch.randn(5, 3, 9),),
    "dtype": lambda: (torch.randn(5, 3, 4, dtype=torch.float64),),
    "empty_time": lambda: (torch.randn(0, 3, 4),),
}


@pytest.mark.parametrize("bad", list(BAD_SEQ_INPUTS))
@pytest.mark.parametrize("theirs_cls,ours_cls", PAIRS, ids=["lstm", "gru", "rnn"])
def test_bad_input_same_error_as_torch(theirs_cls, ours_cls, bad):
    theirs, ours = theirs_cls(4, 6), ours_cls(4, 6)
    _raises_like_torch(theirs, ours, *BAD_SEQ_INPUTS[bad]())


def test_bad_hx_same_error_as_torch():
    theirs, ours = nn.LSTM(4, 6, num_layers=2), fused_rnn.LSTM(4, 6, num_layers=2)
    x = torch.randn(5, 3, 4)
    h, c = torch.randn(2, 3, 6), torch.randn(2, 3, 6)
    _raises_like_torch(theirs, ours, x, (h[:1], c))  # wrong layers
    _raises_like_torch(theirs, ours, x, (h, c[:, :2]))  # wrong batch in c
    _raises_like_torch(theirs, ours, x, (h[0], c[0]))  # 2-D hx for batched input
    _raises_like_torch(theirs, ours, x[:, 0], (h, c))  # 3-D hx for unbatched input
    g_theirs, g_ours = nn.GRU(4, 6), fused_rnn.GRU(4, 6)
    _raises_like_torch(g_theirs, g_ours, x, torch.randn(1, 3, 7))
    _raises_like_torch(g_theirs, g_ours, x, torch.randn(3, 6))
    _raises_like_torch(
        nn.LSTM(4, 6, batch_first=True), fused_rnn.LSTM(4, 6, batch_first=True), x, (h[:1], c[:1])
    )  # batch_first: batch is dim 0 (5), hx says 3


@pytest.mark.parametrize("theirs_cls,ours_cls", CELL_PAIRS, ids=["lstmcell", "grucell", "rnncell"])
def test_cell_bad_input_same_error_as_torch(theirs_cls, ours_cls):
    theirs, ours = theirs_cls(3, 4), ours_cls(3, 4)
    _raises_like_torch(theirs, ours, torch.randn(2, 2, 3))
    _raises_like_torch(theirs, ours, torch.randn(2, 5))
    h = torch.randn(3, 4)
    _raises_like_torch(theirs, ours, torch.randn(2, 3), (h, h) if theirs_cls is nn.LSTMCell else h)
    h = torch.randn(2, 5)
    _raises_like_torch(theirs, ours, torch.randn(2, 3), (h, h) if theirs_cls is nn.LSTMCell else h)


def test_device_mismatch_is_a_clear_error():
    m = fused_rnn.LSTM(4, 6)
    x = torch.randn(5, 3, 4, device="meta")
    with pytest.raises(RuntimeError, match="not at the same device"):
        m(x)


class _Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 6)
        self.enc = nn.Sequential(nn.Linear(6, 6), nn.Tanh())
        self.rnns = nn.ModuleList([nn.LSTM(6, 8, bidirectional=True), nn.GRU(16, 5)])
        self.cells = nn.ModuleDict({"l": nn.LSTMCell(5, 5), "g": nn.GRUCell(5, 5)})

    def forward(self, tok):
        x = self.enc(self.emb(tok))
        x, _ = self.rnns[0](x)
        x, h = self.rnns[1](x)
        hc = self.cells["l"](x[-1])
        return x, self.cells["g"](hc[0], h[0])


def test_convert_nested_model_in_place_and_exact():
    torch.manual_seed(0)
    model = _Tagger()
    tok = torch.randint(0, 20, (7, 3))
    before = model(tok)
    params_before = {n: p for n, p in model.named_parameters()}
    out = fused_rnn.convert(model, backend="reference")
    assert out is model
    assert type(model.rnns[0]) is fused_rnn.LSTM and type(model.rnns[1]) is fused_rnn.GRU
    assert type(model.cells["l"]) is fused_rnn.LSTMCell
    assert type(model.cells["g"]) is fused_rnn.GRUCell
    for n, p in model.named_parameters():  # the very same tensors: optimisers keep working
        assert p is params_before[n]
    after = model(tok)
    for a, b in zip(before, after):
        assert torch.equal(a, b) or torch.allclose(a, b, rtol=0, atol=1e-6)
    # and the state_dict still loads into the plain torch model
    _Tagger().load_state_dict(model.state_dict())


def test_convert_a_bare_module_returns_the_new_one():
    m = nn.GRU(3, 4)
    new = fused_rnn.convert(m)
    assert type(new) is fused_rnn.GRU and new.weight_ih_l0 is m.weight_ih_l0


def test_weight_norm_and_parametrizations_are_honoured():
    """Weights are read at every forward (like torch's _flat_weights refresh), so
    parametrizations and functional_call see the current tensors."""
    theirs, ours = nn.LSTM(3, 4), fused_rnn.LSTM(3, 4, backend="reference")
    ours.load_state_dict(theirs.state_dict())
    for m in (theirs, ours):
        torch.nn.utils.parametrizations.weight_norm(m, name="weight_hh_l0")
        with torch.no_grad():
            m.parametrizations.weight_hh_l0.original0.mul_(0.5)
    x = torch.randn(5, 2, 3)
    torch.testing.assert_close(ours(x)[0], theirs(x)[0])


def test_deepcopy_and_change_dropout_after_construction():
    import copy

    m = fused_rnn.GRU(3, 4, num_layers=2, backend="reference")
    m2 = copy.deepcopy(m)
    x = torch.randn(5, 2, 3)
    assert torch.equal(m(x)[0], m2(x)[0]) and m2.backend == "reference"
    m2.dropout = 0.9
    m2.train()
    assert not torch.equal(m(x)[0], m2(x)[0])


def test_constructor_argument_errors_like_torch():
    for args, kw in [
        ((0, 4), {}),
        ((3, 0), {}),
        ((3, 4), dict(num_layers=0)),
        ((3, 4), dict(dropout=1.5)),
        ((3.0, 4), {}),
        ((3, 4), dict(proj_size=4)),
        ((3, 4), dict(proj_size=-1)),
    ]:
        _raises_like_torch(
            lambda a=args, k=kw: nn.LSTM(*a, **k), lambda a=args, k=kw: fused_rnn.LSTM(*a, **k)
        )


def test_hidden_on_another_device_is_a_clear_error():
    m = fused_rnn.LSTM(3, 4)
    x = torch.randn(5, 2, 3)
    h = torch.zeros(1, 2, 4, device="meta")
    with pytest.raises(RuntimeError, match="Input and hidden tensors are not at the same device"):
        m(x, (h, h))


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("theirs_cls,ours_cls", PAIRS, ids=["lstm", "gru", "rnn"])
def test_train_mode_dropout_draws_torchs_masks(theirs_cls, ours_cls, packed):
    """Same seed, same masks as torch: between-layer dropout is drawn in torch's layout (over
    the packed data for PackedSequence input), so seeded training runs track each other."""
    theirs = theirs_cls(4, 6, num_layers=3, dropout=0.5, bidirectional=True).train()
    ours = ours_cls(4, 6, num_layers=3, dropout=0.5, bidirectional=True, backend="reference")
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(5, 3, 4)
    if packed:
        x = torch.nn.utils.rnn.pack_padded_sequence(
            x, torch.tensor([3, 5, 2]), enforce_sorted=False
        )
    torch.manual_seed(11)
    a = theirs(x)[0]
    torch.manual_seed(11)
    b = ours(x)[0]
    if packed:
        a, b = a.data, b.data
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
