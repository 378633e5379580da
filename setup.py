"""fused_rnn: fused LSTM / GRU kernels for PyTorch.

The compiled extension (fused_rnn._C) is added by the C++ build; set FUSED_RNN_NO_EXT=1 to
install the pure-Python part only.
"""

from setuptools import find_packages, setup

setup(
    name="fused_rnn",
    version="0.1.0",
    description="Fused LSTM and GRU kernels (C++, CUDA, Triton) as drop-in torch.nn modules",
    packages=find_packages(include=["fused_rnn", "fused_rnn.*"]),
    python_requires=">=3.10",
    install_requires=["torch>=2.4"],
    extras_require={"triton": ["triton>=3.0"]},
)
