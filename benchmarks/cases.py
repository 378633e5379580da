"""What is benchmarked: the Case record and the quick / full grids.

Shapes follow docs/TARGETS.md: the FlashRNN/cuDNN anchor (H=768, B=16, T=1024), PyTorch's
fastrnns default (T=100, B=64, I=512, H=512), one-factor sweeps around a base shape over
B in {1, 16, 64, 256}, H in {128, 256, 512, 768, 1024} and T in {16, 128, 1024}, stacked and
bidirectional layers, and batches whose lengths follow the IMDB review-length distribution,
fed packed (PackedSequence) or padded (one dense tensor, lengths ignored).

Grids are ordered by priority: when a time budget runs out (``run.py --budget-s``) the cases
left are reported as skipped, so the anchor shapes come first.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

CELLS = ("lstm", "gru")  # the cells of every sweep of the grids
RNN_CELLS = ("rnn_tanh", "rnn_relu")  # the Elman RNN: at the target shapes and IMDB batches
# Every cell a Case may name: torch module and gate count.
ALL_CELLS = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}
DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}
SHORT_DTYPE = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float64": "fp64"}


@dataclass(frozen=True)
class Case:
    """One benchmarked configuration.

    T is the padded sequence length; for ``varlen`` cases it is the clip applied to the sampled
    IMDB lengths, and the real padded length is the longest sampled one.
    ``providers`` limits which providers run (None: all that can); ``tags`` name the groups the
    case belongs to (plots select sweeps by tag).
    """

    cell: str
    B: int
    T: int
    I: int  # noqa: E741 - the input size, named as in the dimension legend
    H: int
    layers: int = 1
    bidirectional: bool = False
    dtype: str = "float32"
    varlen: str = ""  # "" (every sequence has T steps), "packed" or "padded" (IMDB lengths)
    tags: tuple[str, ...] = ()
    providers: tuple[str, ...] | None = None
    proj: int = 0  # LSTM proj_size (0: none)

    def __post_init__(self):
        if self.cell not in ALL_CELLS:
            raise ValueError(f"cell must be one of {tuple(ALL_CELLS)}, got {self.cell!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}")
        if self.varlen not in ("", "packed", "padded"):
            raise ValueError(f"varlen must be '', 'packed' or 'padded', got {self.varlen!r}")
        if min(self.B, self.T, self.I, self.H, self.layers) < 1:
            raise ValueError(f"sizes must be >= 1: {self}")
        if self.proj and (self.cell != "lstm" or not 0 < self.proj < self.H):
            raise ValueError(f"proj needs an LSTM and 0 < proj < H: {self}")

    @property
    def P(self) -> int:
        """The output width: proj_size if set, else H."""
        return self.proj or self.H

    @property
    def module_kwargs(self) -> dict:
        """Constructor kwargs beyond (I, H, layers, bidirectional) shared by torch and ours."""
        return {"proj_size": self.proj} if self.proj else {}

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def id(self) -> str:
        """Readable id such as ``lstm-B16-T1024-I768-H768-bf16`` (layers, bidi, varlen if set)."""
        parts = [self.cell, f"B{self.B}", f"T{self.T}", f"I{self.I}", f"H{self.H}"]
        if self.layers > 1:
            parts.append(f"L{self.layers}")
        if self.bidirectional:
            parts.append("bidi")
        if self.proj:
            parts.append(f"P{self.proj}")
        if self.varlen:
            parts.append(f"imdb-{self.varlen}")
        parts.append(SHORT_DTYPE[self.dtype])
        return "-".join(parts)

    def wants(self, provider: str) -> bool:
        return self.providers is None or provider in self.providers


# Every provider name the harness knows (see providers.py); used to spell "all but costly".
ALL_PROVIDER_NAMES = (
    "torch",
    "torch_compile",
    "reference",
    "cpp",
    "native",
    "auto",
    "cuda",
    "triton",
    "flashrnn",
    "haste",
)

# Providers that are slow by design or costly to start (a Python loop per step; a compile per
# new shape) run only on the anchor shapes of the full grid, to keep it inside its budget.
COSTLY = ("reference", "torch_compile")


def _cheap_only(case: Case) -> Case:
    return replace(case, providers=tuple(p for p in ALL_PROVIDER_NAMES if p not in COSTLY))


# The IMDB example's model (examples/imdb_sentiment.py): 2-layer bidirectional LSTM over
# embeddings, batch 64, reviews clipped to max-len tokens. Its defaults are emb 256, hidden 256,
# max-len 400; the CPU runs use emb 128, hidden 128, max-len 200.
IMDB_EXAMPLE = dict(B=64, T=400, I=256, H=256, layers=2, bidirectional=True)
IMDB_EXAMPLE_CPU = dict(B=64, T=200, I=128, H=128, layers=2, bidirectional=True)
# The quick grid keeps the CPU runs' model with a quarter of the batch: torch's packed backward
# on CPU costs seconds per call at B=64.
IMDB_QUICK = dict(IMDB_EXAMPLE_CPU, B=16)


def quick_grid(device: str) -> list[Case]:
    """About a minute on an idle 2-core CPU (fp32), seconds on a GPU.

    The two shapes of the CPU target (fastrnns, the IMDB example) run torch against the
    compiled backends only; torch.compile runs on one small case, to show whether it works.
    """
    if device == "cpu":
        return _quick_cpu_grid()
    dt = "float32"
    cases = [
        _cheap_only(Case("lstm", 64, 100, 512, 512, dtype=dt, tags=("target", "fastrnns"))),
        *(
            _cheap_only(Case("lstm", dtype=dt, varlen=vl, tags=("imdb",), **IMDB_QUICK))
            for vl in ("packed", "padded")
        ),
        _cheap_only(
            Case("lstm", 16, 32, 128, 128, layers=2, bidirectional=True, dtype=dt, tags=("stack",))
        ),
    ]
    for cell in CELLS:
        for H in (64, 128, 256):
            tags = ("sweep-H", "sweep-B") if H == 128 else ("sweep-H",)
            c = Case(cell, 16, 32, H, H, dtype=dt, tags=tags)
            cases.append(
                c
                if (cell, H) == ("lstm", 128)
                else replace(
                    c, providers=tuple(p for p in ALL_PROVIDER_NAMES if p != "torch_compile")
                )
            )
        for B in (1, 64):
            cases.append(
                Case(
                    cell,
                    B,
                    32,
                    128,
                    128,
                    dtype=dt,
                    tags=("sweep-B",),
                    providers=tuple(p for p in ALL_PROVIDER_NAMES if p != "torch_compile"),
                )
            )
    return cases


# The CPU grid's providers: torch's module, the fused C++ kernels, torch's op through fused_rnn
# ("native") and what backend="auto" picks between them (fused_rnn.cpu_policy).
CPU_PROVIDERS = ("torch", "cpp", "native", "auto")


def _quick_cpu_grid() -> list[Case]:
    """fp32 and bf16; LSTM and GRU; padded and packed (IMDB lengths); B = 1, 16, 64; the
    fastrnns target shape. Timed interleaved (runner.py); 10-20 minutes on 2 shared cores."""
    cases = []
    for dt in ("float32", "bfloat16"):
        for cell in CELLS:
            for vl in ("packed", "padded"):
                cases.append(Case(cell, dtype=dt, varlen=vl, tags=("imdb",), **IMDB_QUICK))
            for B in (1, 16, 64):
                cases.append(Case(cell, B, 32, 128, 128, dtype=dt, tags=("sweep-B",)))
            cases.append(Case(cell, 16, 32, 256, 256, dtype=dt, tags=("sweep-H",)))
    # The Elman RNN (both nonlinearities) at an IMDB-like layer, padded and packed, and an LSTM
    # with a projection (LSTMP, speech-like), fp32.
    for cell in RNN_CELLS:
        for vl in ("packed", "padded"):
            cases.append(Case(cell, dtype="float32", varlen=vl, tags=("imdb",), **IMDB_QUICK))
    cases.append(Case("lstm", 32, 50, 256, 1024, proj=256, tags=("lstmp",)))
    # The largest (minutes in bf16, where torch has no fast path on AVX2 CPUs) come last, so a
    # --budget-s cuts them first.
    for dt in ("float32", "bfloat16"):
        cases.append(Case("lstm", 64, 100, 512, 512, dtype=dt, tags=("target", "fastrnns")))
    cases.append(Case("rnn_tanh", 64, 100, 512, 512, tags=("target", "fastrnns")))
    return [replace(c, providers=CPU_PROVIDERS) for c in cases]


def full_grid(device: str) -> list[Case]:
    """The full grid: every TARGETS.md shape, sweeps, stacks and IMDB batches.

    On CUDA: anchors (H=768 B=16 T=1024; fastrnns) in fp32/fp16/bf16 with every provider, then
    IMDB batches, sweeps around (B=16, H=768, T=1024) and stacks (2 layers, bidirectional,
    both) in bf16 (the target dtype) without the costly providers: ~200 s by
    :func:`estimate_seconds`
    (``python -m benchmarks.run --device cuda --full --dry-run``), inside the 300 s budget.
    On CPU: fp32 only, sweeps around (B=16, H=256, T=128) without the largest points.
    """
    if device == "cuda":
        dtypes, sweep_dtypes = ("float32", "float16", "bfloat16"), ("bfloat16",)
        base_B, base_H, base_T = 16, 768, 1024
        Bs, Hs, Ts = (1, 16, 64, 256), (128, 256, 512, 768, 1024), (16, 128, 1024)
        imdbs = (IMDB_EXAMPLE, dict(B=64, T=1024, I=512, H=512))
    else:
        dtypes = sweep_dtypes = ("float32",)
        base_B, base_H, base_T = 16, 256, 128
        Bs, Hs, Ts = (1, 16, 64), (128, 256, 512), (16, 128)
        imdbs = (IMDB_EXAMPLE_CPU,)
    cases: list[Case] = []
    no_compile = tuple(p for p in ALL_PROVIDER_NAMES if p != "torch_compile")
    for shape, tag in (((16, 1024, 768, 768), "anchor"), ((64, 100, 512, 512), "fastrnns")):
        for dt in dtypes:
            for cell in CELLS + RNN_CELLS:
                # torch.compile recompiles for every new module and dtype (seconds each, cold):
                # it runs on one case per cell, the first anchor of the target dtype.
                every = tag == "anchor" and dt == dtypes[-1]
                providers = None if every else no_compile
                cases.append(Case(cell, *shape, dtype=dt, tags=("target", tag),
                                  providers=providers))  # fmt: skip
    for dt in sweep_dtypes:
        # LSTMP, speech-like: H=1024 projected to 256
        cases.append(_cheap_only(Case("lstm", 32, 200, 256, 1024, proj=256, dtype=dt,
                                      tags=("lstmp",))))  # fmt: skip
        for cell in CELLS + RNN_CELLS:
            for imdb in imdbs:
                for vl in ("packed", "padded"):
                    cases.append(
                        _cheap_only(Case(cell, dtype=dt, varlen=vl, tags=("imdb",), **imdb))
                    )
    for dt in sweep_dtypes:
        for cell in CELLS:
            points: dict[tuple[int, int, int], list[str]] = {}
            for B in Bs:
                points.setdefault((B, base_H, base_T), []).append("sweep-B")
            for H in Hs:
                points.setdefault((base_B, H, base_T), []).append("sweep-H")
            for T in Ts:
                points.setdefault((base_B, base_H, T), []).append("sweep-T")
            for (B, H, T), tags in points.items():
                cases.append(_cheap_only(Case(cell, B, T, H, H, dtype=dt, tags=tuple(tags))))
            # Stacked and bidirectional layers, apart and together (cuDNN's persistent kernel
            # covers neither).
            for layers, bidi in ((2, False), (1, True), (2, True)):
                stack = Case(cell, base_B, base_T, base_H, base_H, layers=layers,
                             bidirectional=bidi, dtype=dt, tags=("stack",))  # fmt: skip
                cases.append(_cheap_only(stack))
    return _merge_duplicates(cases)


def _merge_duplicates(cases: list[Case]) -> list[Case]:
    """One case per id, at its first position, with the tags and providers of all its copies
    (the sweeps' base point is also an anchor shape)."""
    merged: dict[str, Case] = {}
    for c in cases:
        first = merged.get(c.id)
        if first is None:
            merged[c.id] = c
            continue
        providers = (
            None
            if first.providers is None or c.providers is None
            else tuple(dict.fromkeys(first.providers + c.providers))
        )
        merged[c.id] = replace(
            first, tags=tuple(dict.fromkeys(first.tags + c.tags)), providers=providers
        )
    return list(merged.values())


def estimate_seconds(case: Case, providers: tuple[str, ...], device: str, quick: bool) -> float:
    """A rough wall-time guess for one case (to budget grids; not a measurement).

    A forward call is priced as its FLOPs (2*G*B*H*(I+H) per step, layer and direction) at an
    assumed rate plus a fixed cost per step (launches on CUDA, loop overhead on CPU); a training
    call as 3 forwards. Each provider costs its two timed loops (at least ``min_reps`` calls or
    ``target_s``, plus warm-up) and its two checked calls; the float64 oracle one training call.
    Providers that compile on first use (torch_compile, triton) add a flat allowance.
    """
    from .timing import TimingConfig

    cfg = TimingConfig.for_device(device, quick)
    gates = ALL_CELLS[case.cell]
    dirs = 2 if case.bidirectional else 1
    T = case.T if not case.varlen else case.T * 0.8  # the longest of B IMDB draws
    steps = T * case.layers * dirs
    flop = 2 * gates * case.B * case.H * (case.I + case.H) * steps
    if device == "cuda":
        rate = 3e13 if case.dtype == "float32" else 8e13
        rate64, per_step, compile_s = 2e13, 10e-6, 2.0
    else:
        rate, rate64, per_step, compile_s = 3e10, 1.5e10, 20e-6, 4.0
    fwd = flop / rate + steps * per_step
    total = 3 * flop / rate64 + steps * per_step * 3
    for name in providers:
        # The reference backend is a Python loop of small ops per step: launch-bound on CUDA.
        slow = (10 if device == "cuda" else 1.5) if name == "reference" else 1
        t_inf, t_train = fwd * slow, 3 * fwd * slow
        for t in (t_inf, t_train):
            total += max(cfg.target_s, cfg.min_reps * t) + cfg.warmup * t
        total += t_inf + t_train
        if name in ("torch_compile", "triton"):
            total += compile_s
        if name == "flashrnn":
            total += 60.0  # nvcc builds its kernels at the first call of each configuration
    return total
