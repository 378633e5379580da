"""ONNX export of fused_rnn modules (fused_rnn/export.py): the standard ONNX RNN operators, the
same outputs as PyTorch in onnxruntime (CPU), with torch's recommended exporter (dynamo=True)
and the TorchScript one; clear errors where ONNX has no equivalent; torch.export.export still
keeps the fused ops. Sizes are tiny: the dynamo exporter costs seconds per export."""

from __future__ import annotations

import io
import logging
import warnings

import pytest
import torch
from torch import nn
from torch.utils._pytree import tree_leaves

import fused_rnn
from fused_rnn.export import OnnxExportError

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")  # the dynamo exporter's op library

T, B, I, H = 5, 3, 4, 6  # noqa: E741
EXPORTERS = [pytest.param(True, id="dynamo"), pytest.param(False, id="torchscript")]


def _kinds() -> list:
    """(fused class, torch class, constructor kwargs, ONNX op) for every module kind there is;
    the RNN ones only once fused_rnn has them."""
    kinds = [
        pytest.param(fused_rnn.LSTM, {}, "LSTM", id="lstm"),
        pytest.param(fused_rnn.GRU, {}, "GRU", id="gru"),
    ]
    if hasattr(fused_rnn, "RNN"):
        # The dynamo exporter has no aten::rnn_* mapping and decomposes it to MatMul / Tanh /
        # Relu steps (an equivalent standard graph); the TorchScript exporter emits ONNX RNN.
        kinds += [
            pytest.param(fused_rnn.RNN, {"nonlinearity": "tanh"}, None, id="rnn_tanh"),
            pytest.param(fused_rnn.RNN, {"nonlinearity": "relu"}, None, id="rnn_relu"),
        ]
    return kinds


def _cells() -> list:
    cells = [
        pytest.param(fused_rnn.LSTMCell, {}, id="lstmcell"),
        pytest.param(fused_rnn.GRUCell, {}, id="grucell"),
    ]
    if hasattr(fused_rnn, "RNNCell"):
        cells += [
            pytest.param(fused_rnn.RNNCell, {"nonlinearity": "tanh"}, id="rnncell_tanh"),
            pytest.param(fused_rnn.RNNCell, {"nonlinearity": "relu"}, id="rnncell_relu"),
        ]
    return cells


def _export(model: nn.Module, args: tuple, dynamo: bool) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)  # the dynamo exporter's notes on missing torchvision
        try:
            if dynamo:
                return torch.onnx.export(model, args, dynamo=True, verbose=False).model_proto
            f = io.BytesIO()
            torch.onnx.export(model, args, f, dynamo=False)
            return onnx.load_from_string(f.getvalue())
        finally:
            logging.disable(logging.NOTSET)


def _check(model: nn.Module, args: tuple, dynamo: bool, want_op: str | None) -> None:
    """Export, check the graph's operators, run it in onnxruntime, compare every output."""
    model.eval()
    proto = _export(model, args, dynamo)
    ops = {n.op_type for n in proto.graph.node}
    domains = {n.domain for n in proto.graph.node}
    assert not any("fused" in d for d in domains), domains
    if want_op is not None:
        assert want_op in ops, ops
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {i.name: a.numpy() for i, a in zip(sess.get_inputs(), tree_leaves(args))}
    got = sess.run(None, feeds)
    with torch.no_grad():
        want = tree_leaves(model(*args))
    assert len(got) == len(want)
    for g, w in zip(got, want):
        torch.testing.assert_close(torch.from_numpy(g), w, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dynamo", EXPORTERS)
@pytest.mark.parametrize("cls,kw,op", _kinds())
def test_export_matches_onnxruntime(cls, kw, op, dynamo):
    """2 layers, bidirectional, batch_first, hx given: the case that exercises every index."""
    m = cls(I, H, num_layers=2, bidirectional=True, batch_first=True, **kw)
    x = torch.randn(B, T, I)
    h0 = torch.randn(4, B, H)
    hx = (h0, torch.randn(4, B, H)) if cls is fused_rnn.LSTM else h0
    _check(m, (x, hx), dynamo, op or (None if dynamo else "RNN"))


@pytest.mark.parametrize("cls,kw,op", _kinds())
def test_export_time_major_no_hx_no_bias(cls, kw, op):
    # TorchScript exporter only: it takes 0.1 s where the dynamo one takes seconds, and the
    # module side (our hand-over to torch's forward) is the same for both.
    m = cls(I, H, bias=False, **kw)
    _check(m, (torch.randn(T, B, I),), False, op or "RNN")


@pytest.mark.parametrize("dynamo", EXPORTERS)
@pytest.mark.parametrize("cls,kw", _cells())
def test_export_cells(cls, kw, dynamo):
    m = cls(I, H, **kw)
    h = torch.randn(B, H)
    hx = (h, torch.randn(B, H)) if cls is fused_rnn.LSTMCell else h
    _check(m, (torch.randn(B, I), hx), dynamo, None)


class _Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(11, I)
        self.rnn = nn.LSTM(I, H, batch_first=True, bidirectional=True)
        self.out = nn.Linear(2 * H, 3)

    def forward(self, tokens):
        return self.out(self.rnn(self.emb(tokens))[0])


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_converted_model_exports_like_torch(dynamo):
    model = fused_rnn.convert(_Tagger())
    assert isinstance(model.rnn, fused_rnn.LSTM)
    _check(model, (torch.randint(0, 11, (B, T)),), dynamo, "LSTM")


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_proj_size_raises_clear_error(dynamo):
    m = fused_rnn.LSTM(I, H, proj_size=2).eval()
    with pytest.raises(Exception) as info:
        _export(m, (torch.randn(T, B, I),), dynamo)
    # the dynamo exporter wraps errors from the traced code; ours must be the cause
    chain, e = [], info.value
    while e is not None:
        chain.append(e)
        e = e.__cause__ or e.__context__
    assert any(isinstance(e, OnnxExportError) for e in chain) or "proj_size=2" in str(info.value)
    assert "no output projection" in "".join(map(str, chain))


def test_packed_input_raises_clear_error():
    m = fused_rnn.GRU(I, H).eval()
    packed = nn.utils.rnn.pack_padded_sequence(torch.randn(T, B, I), torch.tensor([5, 4, 2]))
    with _onnx_flag():  # no exporter gets this far with a PackedSequence argument
        with pytest.raises(OnnxExportError, match="PackedSequence.*padded tensor"):
            m(packed)


class _onnx_flag:
    """What torch.onnx.export sets while it traces (the flag both exporters read)."""

    def __enter__(self):
        from torch.onnx._internal.exporter import _flags

        self._flags, _flags._is_onnx_exporting = _flags, True

    def __exit__(self, *exc):
        self._flags._is_onnx_exporting = False


def test_torch_export_keeps_fused_ops():
    if fused_rnn.backend_status()["cpp"] is not None:
        pytest.skip("the cpp backend (the one with custom ops on the CPU) is unavailable")
    m = fused_rnn.LSTM(I, H, backend="cpp")
    ep = torch.export.export(m, (torch.randn(T, B, I),))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert "fused_rnn.lstm_fwd.default" in targets, targets
    assert not any("aten.lstm" in t for t in targets)
