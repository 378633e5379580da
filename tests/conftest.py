"""Shared test setup: Triton interpreter on CPU-only machines, seeds, device and backend
parametrisation, skip markers.

Parity tests take a ``backend`` and a ``device`` through :func:`backend_params`: every backend
registered in fused_rnn that is available for that device is tested, so a new backend inherits
the whole suite by registering itself.
"""

import os

import torch

# Must happen before any @triton.jit runs (i.e. before fused_rnn.triton is imported): with no
# CUDA device, Triton kernels can only run in its interpreter.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import fused_rnn  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
if HAS_CUDA:
    # torch's default lets cuDNN run fp32 RNNs on TF32 tensor cores (10-bit mantissa): the
    # "2x torch's error" bound of the fp32 parity tests would then be TF32's, far looser than
    # the IEEE fp32 our kernels compute. (matmul's flag is off by default; kept off.)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
DEVICES = ["cpu"] + (["cuda"] if HAS_CUDA else [])

# Backends that are orders of magnitude slower here (Triton in its CPU interpreter) run only
# the cases marked small.
INTERPRETED = {"triton"} if os.environ.get("TRITON_INTERPRET") == "1" else set()

# Which backends run on which device. "reference" runs anywhere.
DEVICE_BACKENDS = {
    "cpu": ("reference", "cpp", "native", "triton"),
    "cuda": ("reference", "cuda", "native", "triton"),
}


def backend_params():
    """pytest params (device, backend) for every available backend, GPU ones marked gpu."""
    avail = set(fused_rnn.available_backends())
    params = []
    for dev in ("cpu", "cuda"):
        for name in DEVICE_BACKENDS[dev]:
            if dev == "cpu" and name == "triton" and "triton" not in INTERPRETED:
                continue
            marks = [pytest.mark.gpu] if dev == "cuda" else []
            if name not in avail or (dev == "cuda" and not HAS_CUDA):
                why = fused_rnn.backend_status().get(name) or "no CUDA device"
                marks.append(pytest.mark.skip(reason=f"{name} unavailable: {why}"))
            params.append(pytest.param(dev, name, id=f"{dev}-{name}", marks=marks))
    return params


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def require_support(backend: str, cell: str, dtype, device: str, has_proj: bool = False) -> None:
    """Skip (with the backend's own reason) a case the backend says it cannot run. Explicitly
    asking such a backend raises BackendUnavailableError; that is tested in test_backends."""
    be = fused_rnn.backends.get_backend(backend)
    why = be.supports(cell, torch.empty(0, dtype=dtype, device=device), has_proj)
    if why is not None:
        pytest.skip(f"{backend} does not support this case: {why}")
