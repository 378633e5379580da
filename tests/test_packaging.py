"""The package as installed: the compiled extension loads (unless FUSED_RNN_NO_EXT=1), it was
built for the torch in use (and an extension built for another torch is refused with both
versions and the rebuild command, never an undefined-symbol error), py.typed ships, and the
public API is typed and documented. CI runs the suite against the installed wheel and sets
FUSED_RNN_EXPECT_INSTALLED=1, so that it also checks which copy of fused_rnn it tests."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fused_rnn
from fused_rnn.ops import load_library

NO_EXT = os.environ.get("FUSED_RNN_NO_EXT", "") == "1"


@pytest.mark.skipif(NO_EXT, reason="FUSED_RNN_NO_EXT=1: the extension is disabled on purpose")
def test_extension_loaded():
    assert load_library() is None
    assert fused_rnn.backend_status()["cpp"] is None
    from fused_rnn._build_info import TORCH_VERSION

    assert TORCH_VERSION == torch.__version__


@pytest.mark.skipif(
    os.environ.get("FUSED_RNN_EXPECT_INSTALLED") != "1", reason="not the installed-wheel run"
)
def test_runs_against_the_installed_package():
    where = Path(fused_rnn.__file__).resolve()
    assert "site-packages" in where.parts, where
    assert not (where.parent.parent / "csrc").exists(), "a source tree's fused_rnn is imported"


def test_py_typed_ships():
    assert (Path(fused_rnn.__file__).parent / "py.typed").is_file()


@pytest.mark.skipif(NO_EXT, reason="FUSED_RNN_NO_EXT=1: the extension is disabled on purpose")
def test_extension_for_another_torch_is_refused_with_the_rebuild_command():
    """Fakes the build stamp (setup.py writes fused_rnn/_build_info.py) in a fresh process."""
    code = (
        "import sys, types, warnings\n"
        "sys.modules['fused_rnn._build_info'] = types.SimpleNamespace(TORCH_VERSION='2.0.0+old')\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    import fused_rnn, torch\n"
        "print('IMPORT-WARNING', *[str(x.message) for x in w])\n"
        "print('STATUS', fused_rnn.backend_status()['cpp'])\n"
        "try:\n"
        "    fused_rnn.LSTM(3, 4, backend='cpp')(torch.randn(2, 1, 3))\n"
        "except fused_rnn.BackendUnavailableError as e:\n"
        "    print('RAISED', e)\n"
        "print('LOADED', 'fused_rnn._C' in sys.modules)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    out = {line.split(" ", 1)[0]: line for line in run.stdout.splitlines()}
    for key in ("IMPORT-WARNING", "STATUS", "RAISED"):
        line = out[key]
        assert "2.0.0+old" in line and torch.__version__ in line, line
        assert "pip install --no-build-isolation" in line, line
    assert out["LOADED"] == "LOADED False"  # never dlopen'ed: no undefined-symbol error
    assert "undefined symbol" not in run.stdout + run.stderr


def _public_callables():
    for name in fused_rnn.__all__:
        obj = getattr(fused_rnn, name)
        if inspect.isfunction(obj):
            yield name, obj
        elif inspect.isclass(obj) and issubclass(obj, torch.nn.Module):
            yield f"{name}.forward", obj.forward


@pytest.mark.parametrize("name,fn", list(_public_callables()), ids=lambda v: str(v))
def test_public_api_is_typed_and_documented(name, fn):
    sig = inspect.signature(fn)
    untyped = [
        p.name
        for p in sig.parameters.values()
        if p.name != "self" and p.annotation is inspect.Parameter.empty
    ]
    assert not untyped, f"{name}: parameters without type hints: {untyped}"
    assert sig.return_annotation is not inspect.Signature.empty, f"{name}: no return type"
    owner = getattr(fused_rnn, name.split(".")[0])
    assert inspect.getdoc(fn) or inspect.getdoc(owner), f"{name}: no docstring"
