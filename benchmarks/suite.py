"""The pytest-benchmark suite shared by ``test_lstm.py`` and ``test_gru.py``.

``pytest benchmarks/ --benchmark-only`` times, for each cell, shape, provider and mode
(``infer``, ``fwd_bwd``, ``bwd``), one call per round with pytest-benchmark, grouped by shape
and mode so that its table puts the providers side by side. Like the CLI, a provider is first
checked against the float64 oracle: a wrong one fails its test instead of being timed, one that
cannot run here is skipped with the reason.

Shapes: on CPU a small one and the fastrnns shape (fp32); on CUDA the TARGETS.md anchor
(bf16, fp16) and the fastrnns shape (fp32). ``FUSED_RNN_BENCH_SHAPES=small`` keeps only the
first of them.
"""

from __future__ import annotations

import os
from functools import cache

import pytest
import torch

from .cases import ALL_PROVIDER_NAMES, Case
from .check import Oracle, call_once, make_inputs, make_torch_module
from .providers import select
from .runner import Steps
from .timing import Clock

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
MODES = ("infer", "fwd_bwd", "bwd")
ROUNDS = 5


def shapes(cell: str) -> list[Case]:
    if DEVICE == "cuda":
        out = [Case(cell, 16, 1024, 768, 768, dtype=dt) for dt in ("bfloat16", "float16")]
        out.append(Case(cell, 64, 100, 512, 512, dtype="float32"))
    else:
        out = [Case(cell, 16, 32, 128, 128), Case(cell, 64, 100, 512, 512)]
    return out[:1] if os.environ.get("FUSED_RNN_BENCH_SHAPES") == "small" else out


def params(cell: str) -> list:
    """pytest params (case, provider, mode) with readable ids."""
    return [
        pytest.param(case, prov, mode, id=f"{case.id}-{prov}-{mode}")
        for case in shapes(cell)
        for prov in ALL_PROVIDER_NAMES
        for mode in MODES
    ]


@cache
def _prepared(case: Case, provider: str):
    """(Steps, None) for a provider that passed its check, or (None, why) -- built once per
    case and provider, whatever the number of modes."""
    prov = select([provider])[-1]
    why = prov.skip_reason(case, DEVICE)
    if why is not None:
        return None, f"skip: {why}"
    torch_module = make_torch_module(case, DEVICE, seed=0)
    inputs = make_inputs(case, DEVICE, seed=0)
    oracle = _oracle(case, torch_module, inputs)
    try:
        built = prov.build(torch_module, case)
        for train in (False, True):
            got = call_once(case, built.fn, built.params, inputs, train)
            v = oracle.verdict(got, train, built.param_grads)
            if not v.ok:
                return None, f"WRONG: {'train' if train else 'infer'} {v.describe()}"
    except Exception as e:  # noqa: BLE001 - reported below as the test's outcome
        if type(e).__name__ == "BackendUnavailableError":
            return None, f"skip: {e}"
        raise
    return Steps(case, built, inputs), None


_oracles: dict[str, Oracle] = {}


def _oracle(case, torch_module, inputs) -> Oracle:
    # Every provider of a case shares one torch module and inputs (same seed), so one oracle.
    if case.id not in _oracles:
        _oracles[case.id] = Oracle(case, torch_module, inputs)
    return _oracles[case.id]


def run(benchmark, case: Case, provider: str, mode: str) -> None:
    """Check ``provider`` on ``case`` (skip or fail as needed), then time ``mode``."""
    steps, why = _prepared(case, provider)
    if steps is None:
        if why.startswith("skip: "):
            pytest.skip(why[6:])
        pytest.fail(why)
    clock = Clock(DEVICE)
    benchmark.group = f"{case.id} {mode}"
    benchmark.extra_info.update(provider=provider, case=case.id, mode=mode, T=case.T)
    if mode == "infer":

        def target():
            steps.infer(clock)
            clock.sync()

        benchmark.pedantic(target, rounds=ROUNDS, warmup_rounds=1)
    elif mode == "fwd_bwd":

        def target():
            steps.backward(steps.forward())
            clock.sync()

        benchmark.pedantic(target, rounds=ROUNDS, warmup_rounds=1)
    else:  # bwd: the forward runs in the untimed setup of each round

        def setup():
            outs = steps.forward()
            clock.sync()
            return (outs,), {}

        def target(outs):
            steps.backward(outs)
            clock.sync()

        benchmark.pedantic(target, setup=setup, rounds=ROUNDS, warmup_rounds=1)
