"""Run one case over every provider: check first, then time, then rows for the report.

For each provider: skip (with the reason) if it cannot run the case here; otherwise build it
from torch's module, check one inference call and one training call (forward + backward)
against the float64 :class:`~benchmarks.check.Oracle`; a provider that fails is reported
``WRONG`` and is not timed. Passing providers are timed in two loops: inference (no_grad
forward) and training (forward, then backward with fixed upstream gradients), which yields the
four modes ``infer``, ``train_fwd``, ``bwd`` and ``fwd_bwd``.

On the CPU the passing providers of a case are timed interleaved (one call of each in turn,
timing.measure_interleaved), and a provider's speedup is the median over repetitions of torch's
time / its time in the same repetition, with the 20th-80th percentile spread of those ratios:
load from other processes that drifts during the case hits both sides of every ratio alike.
On CUDA each provider is timed in its own loop and the speedup is the ratio of the medians.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass

import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from .cases import Case
from .check import Inputs, Oracle, call_once, make_inputs, make_torch_module, state_of
from .providers import Built, Provider
from .timing import (
    Clock,
    RatioStats,
    Stats,
    TimingConfig,
    measure,
    measure_interleaved,
    peak_memory_mb,
)

MODES = ("infer", "train_fwd", "bwd", "fwd_bwd")


@dataclass
class Result:
    """One provider on one case in one mode. ``status``: ok | WRONG | skip | error."""

    case: Case
    provider: str
    mode: str
    status: str
    T: int  # the padded length actually run
    lengths_source: str = ""
    mean_len: float | None = None
    stats: Stats | None = None
    speedup: float | None = None  # torch's median / this median (same case and mode)
    ratio: RatioStats | None = None  # CPU: per-repetition torch / this, interleaved
    peak_mb: float | None = None
    detail: str = ""  # the check verdict, the skip reason or the error
    stat: str = "median"  # the statistic that us_per_step and speedup use ("median" or "min")

    @property
    def us_per_step(self) -> float | None:
        return None if self.stats is None else self.stats.ms(self.stat) * 1e3 / self.T


def _short(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0][:200] if msg else ''}"


class Steps:
    """The two timed steps of one built provider, with inputs prepared once (untimed)."""

    def __init__(self, case: Case, built: Built, inputs: Inputs):
        self.fn, self.params = built.fn, list(built.params.values())
        x = inputs.x
        self.hx_eval = state_of(inputs.h0, inputs.c0)
        self.inp_eval = x
        self.grads = [inputs.gy, inputs.ghn] + ([inputs.gcn] if inputs.gcn is not None else [])
        if case.varlen == "packed":
            packed = pack_padded_sequence(x, inputs.lengths, enforce_sorted=False)
            self.inp_eval = packed
            data = packed.data.detach().clone().requires_grad_()
            self.inp_train = PackedSequence(
                data, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices
            )
            self.leaves = [data]
            self.grads[0] = pack_padded_sequence(
                inputs.gy, inputs.lengths, enforce_sorted=False
            ).data
        else:
            self.inp_train = x.detach().clone().requires_grad_()
            self.leaves = [self.inp_train]
        h0 = inputs.h0.detach().clone().requires_grad_()
        c0 = None if inputs.c0 is None else inputs.c0.detach().clone().requires_grad_()
        self.leaves += [t for t in (h0, c0) if t is not None]
        self.hx_train = state_of(h0, c0)

    def infer(self, clock: Clock) -> list:
        with torch.no_grad():
            m0 = clock.mark()
            self.fn(self.inp_eval, self.hx_eval)
            return [m0, clock.mark()]

    def forward(self) -> list[torch.Tensor]:
        """A training forward (gradients cleared first); returns [y or its packed data, h_n,
        (c_n)] for :meth:`backward`."""
        for t in self.leaves + self.params:
            t.grad = None
        out, hn = self.fn(self.inp_train, self.hx_train)
        y = out.data if isinstance(out, PackedSequence) else out
        return [y, *hn] if isinstance(hn, tuple) else [y, hn]

    def backward(self, outs: list[torch.Tensor]) -> None:
        torch.autograd.backward(outs, self.grads)

    def train(self, clock: Clock) -> list:
        for t in self.leaves + self.params:
            t.grad = None  # before the first mark, so not timed
        m0 = clock.mark()
        outs = self.forward()
        m1 = clock.mark()
        self.backward(outs)
        return [m0, m1, clock.mark()]


def _check_provider(prov, case, torch_module, inputs, oracle, log):
    """(status, detail, Steps or None): build the provider and check it against the oracle."""
    try:
        built = prov.build(torch_module, case)
        verdicts = [
            oracle.verdict(call_once(case, built.fn, built.params, inputs, t), t, built.param_grads)
            for t in (False, True)
        ]
    except Exception as e:  # noqa: BLE001 - any failure is reported, not raised
        if type(e).__name__ == "BackendUnavailableError":
            return "skip", _short(e), None
        log(f"  {prov.name}: {traceback.format_exc(limit=-3)}")
        return "error", _short(e), None
    detail = "; ".join(
        f"{'train' if i else 'infer'} {v.describe()}" for i, v in enumerate(verdicts)
    )
    if not all(v.ok for v in verdicts):
        return "WRONG", detail, None
    if built.note:
        detail += f"; {built.note}"
    return "ok", detail, Steps(case, built, inputs)


def _time_one(steps, device, cfg, clock):
    """Stats per mode and (infer peak, train peak) of one provider timed on its own."""
    (infer,) = measure(steps.infer, clock, cfg)
    train_fwd, bwd, fwd_bwd = measure(steps.train, clock, cfg, ((0, 1), (1, 2), (0, 2)))
    peaks = (
        peak_memory_mb(lambda: steps.infer(clock), device),
        peak_memory_mb(lambda: steps.train(clock), device),
    )
    return (infer, train_fwd, bwd, fwd_bwd), peaks


def _time_interleaved(steps: dict, cfg, clock):
    """{name: samples per mode (MODES order)}: every provider's calls interleaved."""
    infer = measure_interleaved({n: s.infer for n, s in steps.items()}, clock, cfg)
    spans = ((0, 1), (1, 2), (0, 2))
    train = measure_interleaved({n: s.train for n, s in steps.items()}, clock, cfg, spans)
    return {n: [infer[n][0], *train[n]] for n in steps}


def run_case(
    case: Case,
    providers: list[Provider],
    device: str,
    cfg: TimingConfig,
    seed: int = 0,
    data_dir=None,
    log=print,
    stat: str = "median",
) -> list[Result]:
    """Check and time every provider on ``case``; returns one Result per provider and mode.

    ``stat`` ("median", or "min" on a busy machine) is what speedups compare."""
    torch_module = make_torch_module(case, device, seed)
    inputs = make_inputs(case, device, seed, data_dir)
    T = inputs.x.shape[0]
    mean_len = float(inputs.lengths.double().mean()) if inputs.lengths is not None else None
    oracle = Oracle(case, torch_module, inputs)
    clock = Clock(device)
    results: list[Result] = []

    def emit(provider, status, detail, stats, peaks):
        for mode, st in zip(MODES, stats):
            results.append(
                Result(case, provider, mode, status, T, inputs.lengths_source, mean_len,
                       stats=st, peak_mb=peaks[0] if mode == "infer" else peaks[1],
                       detail=detail)
            )  # fmt: skip

    checked = {}  # name -> (status, detail, Steps or None), in provider order
    for prov in providers:
        if not case.wants(prov.name):
            continue
        why = prov.skip_reason(case, device)
        checked[prov.name] = (
            ("skip", why, None)
            if why is not None
            else _check_provider(prov, case, torch_module, inputs, oracle, log)
        )
    none = (None,) * len(MODES), (None, None)
    timed = {n: c[2] for n, c in checked.items() if c[2] is not None}
    samples = {}
    if device == "cpu" and timed:
        try:
            samples = _time_interleaved(timed, cfg, clock)
        except Exception as e:  # noqa: BLE001
            log(f"  interleaved timing: {traceback.format_exc(limit=-3)}")
            checked = {n: (("error", _short(e), None) if n in timed else c)
                       for n, c in checked.items()}  # fmt: skip
    for name, (status, detail, steps) in checked.items():
        stats, peaks = none
        if steps is not None and device == "cpu" and name in samples:
            stats = tuple(Stats.of(v) for v in samples[name])
        elif steps is not None:
            try:
                stats, peaks = _time_one(steps, device, cfg, clock)
            except Exception as e:  # noqa: BLE001
                log(f"  {name}: {traceback.format_exc(limit=-3)}")
                status, detail = "error", _short(e)
        emit(name, status, detail, stats, peaks)
        if device == "cuda":
            torch.cuda.empty_cache()  # also after an error, so one OOM does not cascade

    base = {r.mode: r.stats.ms(stat) for r in results if r.provider == "torch" and r.stats}
    for r in results:
        r.stat = stat
        if r.stats is not None and r.mode in base:
            r.speedup = base[r.mode] / r.stats.ms(stat)
        if "torch" in samples and r.provider in samples and r.stats is not None:
            i = MODES.index(r.mode)
            r.ratio = RatioStats.of(samples["torch"][i], samples[r.provider][i])
            r.speedup = r.ratio.median
    return results


def run_grid(
    cases: list[Case],
    providers: list[Provider],
    device: str,
    cfg: TimingConfig,
    seed: int = 0,
    data_dir=None,
    budget_s: float | None = None,
    log=print,
    stat: str = "median",
    estimate=None,
    on_case=None,
) -> tuple[list[Result], list[Case]]:
    """Run ``cases`` in order within ``budget_s``; returns (results, cases not run).

    With ``estimate(case) -> seconds``, a case that would not finish inside what is left of the
    budget is not started (a later, cheaper one may still be); without, cases start until the
    budget is spent. ``on_case(results)`` is called as each case finishes (the CLI appends its
    CSV rows there, so a run stopped from outside keeps every finished case)."""
    start = time.monotonic()
    results, left = [], []
    for i, case in enumerate(cases):
        if budget_s is not None:
            spare = budget_s - (time.monotonic() - start)
            need = estimate(case) if estimate is not None else 0.0
            if spare <= 0 or need > spare:
                left.append(case)
                log(f"[{i + 1}/{len(cases)}] {case.id}: not run (~{need:.0f}s > {spare:.0f}s left)")
                continue
        t0 = time.monotonic()
        rs = run_case(case, providers, device, cfg, seed, data_dir, log, stat)
        results += rs
        if on_case is not None:
            on_case(rs)
        log(
            f"[{i + 1}/{len(cases)}] {case.id}: {time.monotonic() - t0:.1f}s  "
            + "  ".join(f"{r.provider}={r.status}" for r in rs if r.mode == "fwd_bwd")
        )
    return results, left
