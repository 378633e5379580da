"""pytest-benchmark: GRU providers against torch's nn.GRU (see benchmarks/suite.py).

Run: pytest benchmarks/ --benchmark-only (add -k cpp or -k infer to narrow).
"""

import pytest

from . import suite


@pytest.mark.parametrize(("case", "provider", "mode"), suite.params("gru"))
def test_gru(benchmark, case, provider, mode):
    suite.run(benchmark, case, provider, mode)
