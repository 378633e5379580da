"""pytest-benchmark: LSTM providers against torch's nn.LSTM (see benchmarks/suite.py).

Run: pytest benchmarks/ --benchmark-only (add -k cpp or -k infer to narrow).
"""

import pytest

from . import suite


@pytest.mark.parametrize(("case", "provider", "mode"), suite.params("lstm"))
def test_lstm(benchmark, case, provider, mode):
    suite.run(benchmark, case, provider, mode)
