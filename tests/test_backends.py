"""Backend registry and selection: explicit, scoped, environment, auto order and its warning."""

from __future__ import annotations

import warnings

import pytest
import torch

import fused_rnn
from fused_rnn import backends
from fused_rnn.reference import ReferenceBackend


class _Named(ReferenceBackend):
    """A reference backend under another name, to observe which backend ran."""

    calls: list

    def __init__(self, name, why=None, unsupported=None):
        self.name, self._why, self._unsupported, self.calls = name, why, unsupported, []

    def available(self):
        return self._why

    def supports(self, cell, x, has_proj):
        return self._unsupported

    def fwd(self, cell, *a):
        self.calls.append(f"{cell.name}_fwd")
        return super().fwd(cell, *a)


@pytest.fixture
def registry(monkeypatch):
    """A scratch registry and auto order, restored afterwards."""
    monkeypatch.setattr(backends, "_FACTORIES", dict(backends._FACTORIES))
    monkeypatch.setattr(backends, "_INSTANCES", {})
    monkeypatch.setattr(backends, "_LOAD_ERRORS", {})
    monkeypatch.setattr(backends, "_warned", set())
    monkeypatch.setattr(backends, "AUTO_ORDER", {"cpu": ("fast", "slow", "reference")})
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    made = {}

    def add(name, **kw):
        made[name] = _Named(name, **kw)
        backends.register_backend(name, lambda: made[name])
        return made[name]

    return add


def _run(backend="auto"):
    return fused_rnn.LSTM(3, 4, backend=backend)(torch.randn(2, 1, 3))


def test_available_backends_lists_reference():
    assert "reference" in fused_rnn.available_backends()
    status = fused_rnn.backend_status()
    assert status["reference"] is None
    for why in status.values():
        assert why is None or isinstance(why, str) and why


def test_auto_takes_the_first_available_in_order(registry):
    fast = registry("fast")
    registry("slow")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing skipped: no warning
        _run()
    assert fast.calls == ["lstm_fwd"]


def test_auto_fallback_warns_once_with_the_reason(registry):
    registry("fast", why="not built: run pip install -e .")
    slow = registry("slow")
    with pytest.warns(RuntimeWarning, match="'fast' skipped \\(not built: run pip install"):
        _run()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once, not per call
        _run()
    assert slow.calls == ["lstm_fwd", "lstm_fwd"]


def test_auto_skips_a_backend_that_cannot_run_the_case(registry):
    registry("fast", unsupported="no projection")
    slow = registry("slow")
    with pytest.warns(RuntimeWarning, match="no projection"):
        _run()
    assert slow.calls


def test_explicit_unavailable_backend_raises_with_reason(registry):
    registry("fast", why="triton is not installed: pip install triton")
    with pytest.raises(fused_rnn.BackendUnavailableError, match="pip install triton"):
        _run("fast")
    with pytest.raises(fused_rnn.BackendUnavailableError, match="unknown fused_rnn backend"):
        _run("nope")


def test_explicit_backend_that_cannot_run_the_case_raises(registry):
    registry("fast", unsupported="float64 is not supported")
    with pytest.raises(fused_rnn.BackendUnavailableError, match="float64 is not supported"):
        _run("fast")


def test_scope_and_environment(registry, monkeypatch):
    fast, slow = registry("fast"), registry("slow")
    monkeypatch.setenv(backends.ENV_VAR, "slow")
    _run()
    assert slow.calls == ["lstm_fwd"] and not fast.calls
    with fused_rnn.use_backend("fast"):  # scope beats the environment
        _run()
        with fused_rnn.use_backend("slow"):  # innermost wins
            _run()
    assert fast.calls == ["lstm_fwd"] and len(slow.calls) == 2
    with fused_rnn.use_backend("fast"):  # an explicit module argument beats the scope
        _run("slow")
    assert len(slow.calls) == 3


def test_a_backend_whose_import_fails_is_unavailable_not_fatal(registry):
    def broken():
        raise ImportError("libfoo.so: cannot open shared object file")

    backends.register_backend("fast", broken)
    registry("slow")
    assert "libfoo.so" in fused_rnn.backend_status()["fast"]
    with pytest.warns(RuntimeWarning, match="libfoo.so"):
        _run()
