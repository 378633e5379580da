"""Benchmark harness: every fused_rnn backend (and torch.compile, FlashRNN, haste when present)
timed against torch's own nn.LSTM / nn.GRU on the same machine, after checking each one's
outputs and gradients against a float64 oracle.

Entry points: ``python -m benchmarks.run`` (CLI: table, CSV history, plots, markdown) and
``pytest benchmarks/ --benchmark-only`` (pytest-benchmark, one file per cell family).
"""
