"""Drop-in modules for torch's LSTM / GRU / RNN / LSTMCell / GRUCell / RNNCell.

They inherit torch's constructor, parameters (names, shapes, initialisation), ``state_dict``,
``flatten_parameters`` and argument checks (``repr`` too, prefixed ``fused_rnn.`` and with
the backend), so ``load_state_dict`` works both ways.
Only ``forward`` changes: it runs through the fused_rnn backends selected by ``backend=`` (see
fused_rnn.backends for the selection rules).

LSTM, GRU and RNN derive from ``nn.RNNBase`` (as torch's own do), not from ``nn.LSTM`` /
``nn.GRU`` / ``nn.RNN``: Dynamo refuses to trace any instance of those classes
(``torch._dynamo.config.allow_rnn``), so subclassing them would make ``torch.compile`` break the
graph at every one of our modules. They borrow torch's argument checks so errors read exactly
like torch's. The cells derive from ``nn.LSTMCell`` / ``nn.GRUCell`` / ``nn.RNNCell`` directly
(Dynamo traces those); a call whose arguments our checks reject is handed to torch's own cell,
so the error a user sees is torch's, word for word.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from .backends import BackendUnavailableError, resolve_backend
from .cells import Cell, cell_for_mode
from .export import exporting_to_onnx, torch_forward
from .functional import _transforms_active, rnn_forward

__all__ = ["GRU", "LSTM", "RNN", "GRUCell", "LSTMCell", "RNNCell"]


class _BackendMixin:
    """The ``backend`` attribute every fused module carries: validated, shown in repr, and
    defaulted when unpickling a module saved without it."""

    def _init_backend(self, backend: str) -> None:
        if not isinstance(backend, str):
            raise TypeError(f"backend must be a string, got {type(backend).__name__}")
        self.backend = backend

    # repr: torch's, prefixed with the package and with the backend appended, so a printed
    # model shows that convert() ran: "fused_rnn.LSTM(10, 20, num_layers=2, backend='auto')".
    def _get_name(self) -> str:
        return f"fused_rnn.{type(self).__name__}"

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, backend={self.backend!r}"

    def __setstate__(self, state):
        super().__setstate__(state)
        self.__dict__.setdefault("backend", "auto")


class _FusedRNNMixin(_BackendMixin):
    """The forward shared by LSTM, GRU and RNN (torch's forward with the fused layers
    underneath). The cell comes from ``nn.RNNBase.mode``."""

    @property
    def _cell(self) -> Cell:
        return cell_for_mode(self.mode)

    @property
    def _mode(self) -> str:
        return "lstm" if self.mode == "LSTM" else "gru" if self.mode == "GRU" else "rnn"

    def _layer_weights(self) -> list[tuple]:
        # nn.RNNBase's _flat_weights: per layer and direction w_ih, w_hh, (b_ih, b_hh),
        # (w_hr), refreshed as torch's forward refreshes them (parameters swapped in by
        # torch.func.functional_call, reassigned attributes).
        self._update_flat_weights()
        proj = self._mode == "lstm" and self.proj_size > 0
        per = 2 + 2 * bool(self.bias) + proj
        fw = self._flat_weights
        out = []
        for i in range(0, len(fw), per):
            w = fw[i : i + per]
            b_ih, b_hh = (w[2], w[3]) if self.bias else (None, None)
            out.append((w[0], w[1], b_ih, b_hh, w[-1] if proj else None))
        return out

    def _zero_state(self, x: Tensor, batch: int) -> tuple[Tensor, ...]:
        n = self.num_layers * (2 if self.bidirectional else 1)
        out_size = self.proj_size if getattr(self, "proj_size", 0) > 0 else self.hidden_size
        h = torch.zeros(n, batch, out_size, dtype=x.dtype, device=x.device)
        if self._mode != "lstm":
            return (h,)
        return (h, torch.zeros(n, batch, self.hidden_size, dtype=x.dtype, device=x.device))

    def _as_tuple(self, hx) -> tuple[Tensor, ...]:
        return tuple(hx) if self._mode == "lstm" else (hx,)

    def _from_tuple(self, states: tuple[Tensor, ...]):
        return states if self._mode == "lstm" else states[0]

    def _check_hx_rank(self, hx, batched: bool) -> None:
        want = 3 if batched else 2
        kind = "batched 3-D" if batched else "unbatched 2-D"
        if self._mode == "lstm":
            if hx[0].dim() != want or hx[1].dim() != want:
                raise RuntimeError(
                    f"For {kind} input, hx and cx should also be {want}-D but got "
                    f"({hx[0].dim()}-D, {hx[1].dim()}-D) tensors"
                )
        elif hx.dim() != want:
            raise RuntimeError(
                f"For {kind} input, hx should also be {want}-D but got {hx.dim()}-D tensor"
            )

    def _resolve(self, input, hx) -> str | None:
        """The backend this call runs on, resolved once here (None where the ordinary path must
        decide: under torch.compile, autocast -- which changes the dtype the choice keys on --,
        torch.func transforms or forward-mode AD, for empty sizes, off the CPU, or when
        resolution fails and the ordinary path should raise with its own context). When it is
        "native" (torch's own RNN op for the whole stack; auto's choice on the CPU wherever no
        fused kernel was measured faster), forward hands the call to torch's own forward,
        checks, packing and all: torch.nn's speed without this module's per-call work on top
        (~50 us, 3-10% of a millisecond-long call)."""
        if isinstance(input, PackedSequence):
            x, sizes = input.data, input.batch_sizes
            if x.dim() != 2 or sizes.numel() == 0:
                return None
            batch = int(sizes[0])
            packed = int(sizes[-1]) != batch  # as _run_stack sees it: unequal lengths
        elif isinstance(input, Tensor) and input.dim() in (2, 3):
            x, packed = input, False
            batch = input.shape[0 if self.batch_first else 1] if input.dim() == 3 else 1
        else:
            return None
        if (
            x.device.type != "cpu"  # native is auto's choice on the CPU only
            or batch == 0
            or x.shape[-1] == 0
            or self.hidden_size == 0
            or torch.compiler.is_compiling()
            or torch.is_autocast_enabled("cpu")
            or _transforms_active(x, _state_list(hx), (self._flat_weights,))
        ):
            return None
        has_proj = self._mode == "lstm" and self.proj_size > 0
        try:
            return resolve_backend(self.backend, self._cell, x, has_proj, packed, batch).name
        except BackendUnavailableError:
            return None

    def _run(self, x: Tensor, states, lengths, batch_first: bool, backend: str):
        return rnn_forward(
            self._cell,
            x,
            states,
            self._layer_weights(),
            self.num_layers,
            float(self.dropout),
            self.training,
            self.bidirectional,
            batch_first,
            lengths,
            backend,
            packed_dropout=lengths is not None,
        )

    def forward(
        self, input: Tensor | PackedSequence, hx: Tensor | tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor | PackedSequence, Tensor | tuple[Tensor, Tensor]]:
        """input (T, B, I), (B, T, I) with ``batch_first``, (T, I) unbatched, or a
        PackedSequence; hx: LSTM ``(h0 (L*D, B, P), c0 (L*D, B, H))``, GRU h0 (L*D, B, H)
        ((L*D, ...) unbatched), None for zeros. Returns output (T, B, D*P) laid out like input
        (packed if it was) and the final state shaped like hx (LSTM ``(h_n, c_n)``)."""
        if exporting_to_onnx():  # torch's RNN ops, which the ONNX exporters know
            return torch_forward(self, input, hx)
        resolved = self._resolve(input, hx)
        if resolved == "native":
            return _torch_forward(self, input, hx)
        backend = resolved or self.backend
        if isinstance(input, PackedSequence):
            return self._forward_packed(input, hx, backend)
        name = type(self).__name__
        if input.dim() not in (2, 3):
            what = "D tensor instead" if self._mode == "rnn" else "D instead"  # torch's wording
            raise ValueError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}{what}")
        batched = input.dim() == 3
        batch_dim = 0 if self.batch_first else 1
        if not batched:
            input = input.unsqueeze(batch_dim)
        if hx is None:
            states = self._zero_state(input, input.size(batch_dim))
        else:
            if self._mode == "lstm" and (not isinstance(hx, (tuple, list)) or len(hx) != 2):
                raise RuntimeError("LSTM expects hx to be a tuple (h_0, c_0) of two tensors")
            self._check_hx_rank(hx, batched)
            states = self._as_tuple(hx)
            if not batched:
                states = tuple(s.unsqueeze(1) for s in states)
        self.check_forward_args(input, self._from_tuple(states), None)
        out, states = self._run(input, states, None, self.batch_first, backend)
        if not batched:
            out = out.squeeze(batch_dim)
            states = tuple(s.squeeze(1) for s in states)
        return out, self._from_tuple(states)

    def _forward_packed(self, packed: PackedSequence, hx, backend: str):
        data, batch_sizes, sorted_idx, unsorted_idx = packed
        B = int(batch_sizes[0])
        if hx is None:
            states = self._zero_state(data, B)
        else:
            states = self._as_tuple(self.permute_hidden(hx, sorted_idx))
        self.check_forward_args(data, self._from_tuple(states), batch_sizes)
        # Work in the packed (length-sorted) order so the output packs back onto the same
        # batch_sizes / indices; one pad op in, one pack op out, nothing per step.
        padded, lengths = pad_packed_sequence(PackedSequence(data, batch_sizes))
        out, states = self._run(padded, states, lengths, False, backend)
        out_data = pack_padded_sequence(out, lengths).data
        result = PackedSequence(out_data, batch_sizes, sorted_idx, unsorted_idx)
        return result, self.permute_hidden(self._from_tuple(states), unsorted_idx)


def _state_list(hx) -> tuple:
    if hx is None:
        return ()
    return tuple(h for h in hx if isinstance(h, Tensor)) if isinstance(hx, (tuple, list)) else (hx,)


def _torch_forward(module, input, hx):
    """torch.nn's forward for ``module`` (nn.LSTM.forward for a fused_rnn.LSTM, ...)."""
    return _TORCH_FORWARD[module._mode](module, input, hx)


class LSTM(_FusedRNNMixin, nn.RNNBase):
    """``torch.nn.LSTM`` with fused kernels. Same arguments plus ``backend="auto"``.

    Input (T, B, I) / (B, T, I) with ``batch_first`` / (T, I) unbatched / PackedSequence;
    hx ``(h0, c0)`` of (L*D, B, P) and (L*D, B, H). Returns ``output, (h_n, c_n)`` as torch does.
    """

    get_expected_cell_size = nn.LSTM.get_expected_cell_size
    check_forward_args = nn.LSTM.check_forward_args
    permute_hidden = nn.LSTM.permute_hidden

    def __init__(self, *args, backend: str = "auto", **kwargs):
        super().__init__("LSTM", *args, **kwargs)
        self._init_backend(backend)


class GRU(_FusedRNNMixin, nn.RNNBase):
    """``torch.nn.GRU`` with fused kernels. Same arguments plus ``backend="auto"``.

    Input as for :class:`LSTM`; hx h0 (L*D, B, H). Returns ``output, h_n``.
    """

    def __init__(self, *args, backend: str = "auto", **kwargs):
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        super().__init__("GRU", *args, **kwargs)
        self._init_backend(backend)


class RNN(_FusedRNNMixin, nn.RNNBase):
    """``torch.nn.RNN`` (Elman, tanh or relu) with fused kernels. Same arguments plus
    ``backend="auto"``.

    Input as for :class:`LSTM`; hx h0 (L*D, B, H). Returns ``output, h_n``.
    """

    def __init__(self, *args, backend: str = "auto", **kwargs):
        # nn.RNN's own argument handling (nonlinearity is its 4th positional argument)
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        if len(args) > 3:
            self.nonlinearity = args[3]
            args = args[:3] + args[4:]
        else:
            self.nonlinearity = kwargs.pop("nonlinearity", "tanh")
        if self.nonlinearity == "tanh":
            mode = "RNN_TANH"
        elif self.nonlinearity == "relu":
            mode = "RNN_RELU"
        else:
            raise ValueError(
                f"Unknown nonlinearity '{self.nonlinearity}'. Select from 'tanh' or 'relu'."
            )
        super().__init__(mode, *args, **kwargs)
        self._init_backend(backend)


class _FusedCellMixin(_BackendMixin):
    """One step of the cell = the sequence contract with T = 1.

    ``_torch_cell`` is torch's class: a call our checks reject is run through its forward so
    the error is torch's own (type and message); it raises before computing anything."""

    _torch_cell: type

    @property
    def _cell(self) -> Cell:
        if isinstance(self, nn.LSTMCell):
            return cell_for_mode("LSTM")
        if isinstance(self, nn.GRUCell):
            return cell_for_mode("GRU")
        return cell_for_mode("RNN_RELU" if self.nonlinearity == "relu" else "RNN_TANH")

    def _args_ok(self, input: Tensor, hx) -> bool:
        """Everything torch's cell (Python checks, then _VF.*_cell's) would accept."""
        if input.dim() not in (1, 2):
            return False
        if getattr(self, "nonlinearity", "tanh") not in ("tanh", "relu"):
            return False
        n = self._cell.n_states
        if hx is not None:
            states = tuple(hx) if n == 2 else (hx,)
            if len(states) != n or any(not isinstance(s, Tensor) for s in states):
                return False
            if any(s.dim() != input.dim() for s in states):
                return False
        else:
            states = ()
        batch = input.size(0) if input.dim() == 2 else 1
        if input.size(-1) != self.input_size:
            return False
        # under autocast torch casts input, states and weights to one dtype itself
        mixed_ok = torch.is_autocast_enabled(input.device.type)
        w = self.weight_ih
        for s in states:
            if (s.size(0) if s.dim() == 2 else 1) != batch or s.size(-1) != self.hidden_size:
                return False
            if (s.dtype != input.dtype and not mixed_ok) or s.device != input.device:
                return False
        if input.dtype != w.dtype and not mixed_ok:
            return False
        return input.device == w.device

    def _raise_like_torch(self, input: Tensor, hx) -> None:
        self._torch_cell.forward(self, input, hx)  # raises torch's error
        raise RuntimeError(  # torch accepted what we cannot run: say so rather than guess
            f"{type(self).__name__}: fused_rnn cannot run this call (input {tuple(input.shape)} "
            f"{input.dtype}); torch.nn.{type(self).__name__} can"
        )

    def _cell_forward(self, input: Tensor, hx):
        if exporting_to_onnx():  # torch's cell ops, which the ONNX exporters know
            return torch_forward(self, input, hx)
        if not self._args_ok(input, hx):
            self._raise_like_torch(input, hx)
        n = self._cell.n_states
        states = None if hx is None else (tuple(hx) if n == 2 else (hx,))
        batched = input.dim() == 2
        if not batched:
            input = input.unsqueeze(0)
            if states is not None:
                states = tuple(s.unsqueeze(0) for s in states)
        if states is None:
            z = input.new_zeros((input.size(0), self.hidden_size))
            states = (z,) * n
        weights = [(self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh, None)]
        _, out = rnn_forward(
            self._cell,
            input.unsqueeze(0),
            tuple(s.unsqueeze(0) for s in states),
            weights,
            1,
            0.0,
            False,
            False,
            False,
            None,
            self.backend,
            is_cell=True,
        )
        out = tuple(s.squeeze(0) for s in out)
        if not batched:
            out = tuple(s.squeeze(0) for s in out)
        return out if n == 2 else out[0]


class LSTMCell(_FusedCellMixin, nn.LSTMCell):
    """``torch.nn.LSTMCell`` with fused kernels: input (B, I) or (I,), hx ``(h, c)`` of (B, H).
    Returns ``(h', c')``."""

    _torch_cell = nn.LSTMCell

    def __init__(self, *args, backend: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        self._init_backend(backend)

    def forward(
        self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        return self._cell_forward(input, hx)


class GRUCell(_FusedCellMixin, nn.GRUCell):
    """``torch.nn.GRUCell`` with fused kernels: input (B, I) or (I,), hx (B, H). Returns h'."""

    _torch_cell = nn.GRUCell

    def __init__(self, *args, backend: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        self._init_backend(backend)

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        return self._cell_forward(input, hx)


class RNNCell(_FusedCellMixin, nn.RNNCell):
    """``torch.nn.RNNCell`` (tanh or relu) with fused kernels: input (B, I) or (I,), hx (B, H).
    Returns h'."""

    _torch_cell = nn.RNNCell

    def __init__(self, *args, backend: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        self._init_backend(backend)

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        return self._cell_forward(input, hx)


_TORCH_FORWARD = {"lstm": nn.LSTM.forward, "gru": nn.GRU.forward, "rnn": nn.RNN.forward}
