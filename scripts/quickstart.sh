#!/usr/bin/env bash
# Fresh machine -> the main job: a venv in .venv, torch, fused_rnn built and installed from this
# checkout (wheel-style, not editable), then `python -m fused_rnn` (environment, which backends
# run here, parity against nn.LSTM / nn.GRU, a short timing). Re-running reuses the venv.
#   TORCH_SPEC  what to install for torch (default torch==2.13.0, the CPU build on the project's
#               machines; e.g. TORCH_SPEC=torch for your platform's default CUDA build)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q --upgrade pip setuptools wheel ninja
python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}" "numpy<2.4"   # numpy: torch warns without it
python -m pip install -q --no-build-isolation .   # compiles fused_rnn._C ahead of time
cd /tmp   # run the installed package, not the checkout's source
python -m fused_rnn "$@"
