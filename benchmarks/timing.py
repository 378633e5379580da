"""Timing and peak memory.

One step of a benchmark returns *marks* (points in time) taken with a :class:`Clock`; the
durations between consecutive marks are its phases. A training step marks before the forward,
between forward and backward and after the backward, so one loop yields the training-forward,
backward and forward+backward times together, each from the same iterations.

- CPU: ``time.perf_counter`` (CPU ops run synchronously).
- CUDA: CUDA events recorded on the current stream and read after one synchronize at the end of
  the loop, so the host never stalls the GPU between iterations (the way ``do_bench`` times).

Each loop warms up first (the first calls compile Triton kernels, build cuDNN plans, run
torch.compile), then sizes the number of repetitions so the loop lasts about ``target_s``,
within [min_reps, max_reps]. Results are medians with the 20th and 80th percentiles as spread.

On the CPU, providers are compared with :func:`measure_interleaved`: one call of each in turn
(A B A B ...), so load that drifts during the loop (other processes on a shared machine) lands
on both sides alike, and :func:`ratio_stats` reports the median of the per-repeat ratios with
its spread.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TimingConfig:
    warmup: int  # untimed calls before measuring (at least one)
    target_s: float  # aim for a measuring loop of about this long
    min_reps: int
    max_reps: int

    @staticmethod
    def for_device(device: str, quick: bool) -> TimingConfig:
        if device == "cuda":
            return TimingConfig(warmup=3, target_s=0.05 if quick else 0.1, min_reps=5, max_reps=200)
        return TimingConfig(warmup=1, target_s=0.15 if quick else 0.5, min_reps=3, max_reps=50)


@dataclass(frozen=True)
class Stats:
    """Milliseconds over ``n`` repetitions. ``min_ms`` is kept beside the median because on a
    shared CPU a call that lost its core for a time slice lands in the upper percentiles."""

    median_ms: float
    p20_ms: float
    p80_ms: float
    min_ms: float
    n: int

    def ms(self, stat: str) -> float:
        """The ``stat`` ("median" or "min") in milliseconds."""
        return {"median": self.median_ms, "min": self.min_ms}[stat]

    @staticmethod
    def of(samples_ms: Sequence[float]) -> Stats:
        if not samples_ms:
            raise ValueError("no samples")
        s = sorted(samples_ms)
        if len(s) == 1:
            return Stats(s[0], s[0], s[0], s[0], 1)
        q = statistics.quantiles(s, n=10, method="inclusive")  # deciles: q[1] = p20, q[7] = p80
        return Stats(statistics.median(s), q[1], q[7], s[0], len(s))


class Clock:
    """Takes marks on one device and turns pairs of marks into milliseconds."""

    def __init__(self, device: str):
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        self.cuda = device == "cuda"

    def mark(self):
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def ms(self, a, b) -> float:
        return a.elapsed_time(b) if self.cuda else (b - a) * 1e3


def measure(
    step: Callable[[Clock], list],
    clock: Clock,
    cfg: TimingConfig,
    spans: Sequence[tuple[int, int]] = ((0, 1),),
) -> list[Stats]:
    """Run ``step(clock) -> marks`` repeatedly; return one Stats per span (i, j): the time
    from mark i to mark j of the same iteration.

    ``step`` must do its own untimed preparation before its first mark.
    """
    # The fastest warm-up call sizes the loop (the first one carries one-off compile costs).
    per_call = float("inf")
    for _ in range(max(1, cfg.warmup)):
        t0 = time.perf_counter()
        step(clock)
        clock.sync()
        per_call = min(per_call, time.perf_counter() - t0)
    reps = int(min(cfg.max_reps, max(cfg.min_reps, cfg.target_s / max(per_call, 1e-6))))
    all_marks = [step(clock) for _ in range(reps)]
    clock.sync()
    return [Stats.of([clock.ms(m[i], m[j]) for m in all_marks]) for i, j in spans]


def measure_interleaved(
    steps: dict[str, Callable[[Clock], list]],
    clock: Clock,
    cfg: TimingConfig,
    spans: Sequence[tuple[int, int]] = ((0, 1),),
) -> dict[str, list[list[float]]]:
    """Like :func:`measure` for several providers at once, interleaved: each repetition calls
    every step once, in turn. Returns ``{name: [samples_ms of span 0, of span 1, ...]}`` with
    sample r of every provider from the same repetition r (see :func:`ratio_stats`)."""
    per_call = 0.0
    for _ in range(max(1, cfg.warmup)):
        for step in steps.values():
            t0 = time.perf_counter()
            step(clock)
            clock.sync()
            per_call += time.perf_counter() - t0
    per_call /= max(1, cfg.warmup)  # one repetition of all providers
    reps = int(min(cfg.max_reps, max(cfg.min_reps, cfg.target_s / max(per_call, 1e-6))))
    marks: dict[str, list] = {name: [] for name in steps}
    for _ in range(reps):
        for name, step in steps.items():
            marks[name].append(step(clock))
            clock.sync()
    return {
        name: [[clock.ms(m[i], m[j]) for m in ms] for i, j in spans] for name, ms in marks.items()
    }


@dataclass(frozen=True)
class RatioStats:
    """base / provider time over paired repetitions: median and 20th / 80th percentiles."""

    median: float
    p20: float
    p80: float
    n: int

    @staticmethod
    def of(base_ms: Sequence[float], ms: Sequence[float]) -> RatioStats:
        r = Stats.of([a / b for a, b in zip(base_ms, ms)])
        return RatioStats(r.median_ms, r.p20_ms, r.p80_ms, r.n)


def peak_memory_mb(fn: Callable[[], object], device: str) -> float | None:
    """Peak extra device memory (MiB) allocated while ``fn()`` runs, measured from the memory
    already allocated before it; the result of ``fn`` is kept alive until the peak is read.

    CUDA only (``torch.cuda.max_memory_allocated``); on CPU torch has no allocator statistics
    and the process RSS is dominated by cached pages, so this returns None ("n/a").
    """
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del out
    return peak / 2**20
