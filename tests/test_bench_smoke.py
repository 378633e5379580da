"""Smoke test of the benchmark harness (benchmarks/): no timings are asserted, only that a tiny
grid runs end to end, writes a sane CSV, markdown page and plot, and that a provider with a
wrong forward or a wrong gradient is reported WRONG instead of being timed.
"""

import csv
import json

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence

from benchmarks import run as bench_run
from benchmarks.cases import Case, full_grid, quick_grid
from benchmarks.lengths import QUANTILES_FILE, review_lengths, sample_lengths
from benchmarks.plot import plot_run
from benchmarks.providers import Built, FusedProvider, Provider, TorchProvider
from benchmarks.render import console_table, markdown
from benchmarks.report import CSV_FIELDS, append_csv, csv_rows, environment, read_csv
from benchmarks.runner import MODES, run_grid
from benchmarks.timing import Clock, Stats, TimingConfig, measure

ONE_REP = TimingConfig(warmup=1, target_s=0.0, min_reps=1, max_reps=1)


def _map(y, f):
    """``f`` applied to the output tensor, or to a PackedSequence's data."""
    return y._replace(data=f(y.data)) if isinstance(y, PackedSequence) else f(y)


class ShiftedOutput(Provider):
    """torch's module with its output shifted by 1e-2: a fast wrong answer."""

    name = "wrong_forward"

    def build(self, torch_module, case):
        def fn(x, hx):
            y, h = torch_module(x, hx)
            return _map(y, lambda t: t + 1e-2), h

        return Built(fn, dict(torch_module.named_parameters()))


class ScaledGradient(Provider):
    """Right outputs, but every gradient through y is 1.1x too large."""

    name = "wrong_backward"

    def build(self, torch_module, case):
        def fn(x, hx):
            y, h = torch_module(x, hx)
            # Same value, gradient scaled by 1.1.
            return _map(y, lambda t: t + 0.1 * (t - t.detach())), h

        return Built(fn, dict(torch_module.named_parameters()))


def _fused_available() -> list:
    try:
        import fused_rnn
    except ImportError:
        return []
    return [b for b in ("reference", "cpp") if b in fused_rnn.available_backends()]


TINY = [
    Case("lstm", 2, 5, 3, 4, tags=("sweep-H", "sweep-B")),
    Case("lstm", 3, 5, 3, 8, tags=("sweep-H",)),
    Case("gru", 2, 5, 3, 4, layers=2, bidirectional=True, tags=("stack",)),
    Case("lstm", 4, 9, 3, 4, varlen="packed", tags=("imdb",)),
    Case("rnn_relu", 3, 6, 3, 4, varlen="padded", tags=("imdb",)),
    Case("lstm", 2, 5, 3, 8, proj=3, tags=("lstmp",)),
]


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory):
    providers = [
        TorchProvider(),
        ShiftedOutput(),
        ScaledGradient(),
        *(FusedProvider(b) for b in _fused_available()),
    ]
    results, not_run = run_grid(TINY, providers, "cpu", ONE_REP, log=lambda *_: None)
    out = tmp_path_factory.mktemp("bench")
    env = environment("cpu")
    rows = csv_rows(results, env)
    append_csv(out / "results.csv", rows)
    append_csv(out / "results.csv", rows)  # history: a second run appends under one header
    return results, not_run, out, env, rows


def test_every_case_provider_and_mode_reported(grid_run):
    results, not_run, *_ = grid_run
    assert not_run == []
    names = {"torch", "wrong_forward", "wrong_backward", *_fused_available()}
    got = {(r.case.id, r.provider, r.mode) for r in results}
    assert got == {(c.id, p, m) for c in TINY for p in names for m in MODES}


def test_wrong_providers_reported_wrong_and_not_timed(grid_run):
    results = grid_run[0]
    for r in results:
        if r.provider.startswith("wrong_"):
            assert r.status == "WRONG", (r.case.id, r.provider, r.detail)
            assert r.stats is None and r.speedup is None
    # The forward-only fault is caught on y; the gradient-only fault on a gradient.
    fwd = {r.detail for r in results if r.provider == "wrong_forward"}
    bwd = {r.detail for r in results if r.provider == "wrong_backward"}
    assert all("infer y:" in d for d in fwd)
    assert all("train grad_" in d for d in bwd)


def test_right_providers_timed_with_ratios(grid_run):
    results = grid_run[0]
    ok = [r for r in results if not r.provider.startswith("wrong_")]
    assert all(r.status == "ok" for r in ok), [(r.provider, r.detail) for r in ok]
    for r in ok:
        assert r.stats.n == 1 and r.stats.median_ms > 0 and r.us_per_step > 0
        assert r.speedup > 0
        if r.provider == "torch":
            assert r.speedup == 1.0


def test_csv_history(grid_run):
    *_, out, env, rows = grid_run
    with (out / "results.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == CSV_FIELDS
        back = list(reader)
    assert len(back) == 2 * len(rows)
    for r in back:
        assert r["device"] == "cpu" and r["device_name"] and r["torch"] == torch.__version__
        assert r["commit"] and r["date"] == env["date"] and r["dtype"] == "float32"
        if r["status"] == "ok":
            assert float(r["median_ms"]) > 0 and float(r["speedup_vs_torch"]) > 0
        else:
            assert r["median_ms"] == "" and r["status"] == "WRONG"
    packed = [r for r in back if r["varlen"] == "packed"]
    assert packed and all(r["lengths_source"].startswith("imdb-") for r in packed)


def test_csv_refuses_other_columns(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="expected"):
        append_csv(path, [])


def test_markdown_console_and_plot(grid_run):
    results, not_run, out, env, rows = grid_run
    plots = plot_run(rows, out)
    assert [p.name for p in plots] == ["sweep_cpu_float32.png"]
    assert plots[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = markdown(rows, ["gru-B9-T9-I9-H9-fp32"], "python -m benchmarks.run", [plots[0].name])
    assert env["device_name"] in md and "| case | mode | torch | reference |" in md
    assert "WRONG" in md and "wrong_forward on lstm-B2-T5-I3-H4-fp32" in md
    assert "![sweep_cpu_float32.png](sweep_cpu_float32.png)" in md
    assert "Not run (time budget): gru-B9-T9-I9-H9-fp32" in md
    table = console_table(rows)
    assert table.count("lstm-B2-T5-I3-H4-fp32") == len(MODES)
    # The page renders the same from the CSV history as from the run's own rows.
    back = [r for r in read_csv(out / "results.csv")][: len(rows)]
    assert markdown(back, ["gru-B9-T9-I9-H9-fp32"], "python -m benchmarks.run",
                    [plots[0].name]) == md  # fmt: skip


def test_imdb_lengths_from_quantiles(tmp_path):
    table = json.loads(QUANTILES_FILE.read_text())
    assert table["n_reviews"] == 25000 and len(table["quantiles"]) == 1001
    a, src = sample_lengths(64, 300, seed=3, data_dir=tmp_path)  # no TSV there
    b, _ = sample_lengths(64, 300, seed=3, data_dir=tmp_path)
    assert src == "imdb-quantiles" and torch.equal(a, b)
    assert a.dtype == torch.int64 and int(a.min()) >= 1 and int(a.max()) <= 300
    assert len(set(a.tolist())) > 10  # spread out, not a constant
    with pytest.raises(ValueError):
        sample_lengths(0, 10, seed=0, data_dir=tmp_path)


def test_imdb_lengths_from_data():
    try:
        lengths = review_lengths()
    except FileNotFoundError as e:
        pytest.skip(f"shared IMDB data not present: {e}")
    quantiles = json.loads(QUANTILES_FILE.read_text())["quantiles"]
    assert len(lengths) == 25000
    assert int(lengths.median()) == pytest.approx(quantiles[500], abs=1)
    got, src = sample_lengths(16, 10_000, seed=0)
    assert src == "imdb-train" and set(got.tolist()) <= set(lengths.tolist())


def test_grids_are_well_formed():
    for grid in (quick_grid("cpu"), full_grid("cpu"), full_grid("cuda")):
        ids = [c.id for c in grid]
        assert len(ids) == len(set(ids))
        assert any("sweep-H" in c.tags for c in grid) and any("sweep-B" in c.tags for c in grid)
    cuda = full_grid("cuda")
    assert {c.dtype for c in cuda} == {"float32", "float16", "bfloat16"}
    assert any(c.id == "lstm-B16-T1024-I768-H768-bf16" for c in cuda)
    assert any(c.id == "gru-B64-T100-I512-H512-fp32" for c in cuda)
    assert {c.varlen for c in cuda} == {"", "packed", "padded"}


def test_cli_dry_run_and_bad_arguments(capsys):
    assert bench_run.main(["--device", "cpu", "--quick", "--dry-run"]) == 0
    assert "rough estimate" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="unknown provider"):
        bench_run.main(["--device", "cpu", "--providers", "nope", "--dry-run"])
    with pytest.raises(SystemExit, match="--cells"):
        bench_run.main(["--device", "cpu", "--cells", "rnn", "--dry-run"])
    with pytest.raises(ValueError, match="cell must be"):
        Case("rnn", 1, 1, 1, 1)


def test_stats_and_measure_spans():
    st = Stats.of([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (st.median_ms, st.min_ms, st.n) == (3.0, 1.0, 5)
    assert 1.0 <= st.p20_ms <= st.median_ms <= st.p80_ms <= 5.0

    class FakeClock(Clock):
        """Marks are a counter advanced by the step itself (ms = difference)."""

        def __init__(self):
            super().__init__("cpu")
            self.now = 0.0

        def mark(self):
            return self.now

        def ms(self, a, b):
            return b - a

    clock = FakeClock()

    def step(c):
        m0 = c.mark()
        c.now += 2.0  # "forward"
        m1 = c.mark()
        c.now += 3.0  # "backward"
        return [m0, m1, c.mark()]

    cfg = TimingConfig(warmup=2, target_s=10.0, min_reps=3, max_reps=7)
    fwd, bwd, total = measure(step, clock, cfg, ((0, 1), (1, 2), (0, 2)))
    assert (fwd.median_ms, bwd.median_ms, total.median_ms) == (2.0, 3.0, 5.0)
    assert fwd.n == 7  # the fake step takes no wall time, so the loop is capped by max_reps


def test_min_statistic_drives_speedups_and_csv():
    reps = TimingConfig(warmup=1, target_s=0.0, min_reps=3, max_reps=3)
    results, _ = run_grid(TINY[:1], [TorchProvider()], "cpu", reps, log=lambda *_: None,
                          stat="min")  # fmt: skip
    for r in results:
        assert r.stat == "min" and r.speedup == 1.0
        assert r.us_per_step == pytest.approx(r.stats.min_ms * 1e3 / r.T)
    rows = csv_rows(results, environment("cpu"))
    assert {r["stat"] for r in rows} == {"min"}
    assert "Minimum time per call" in markdown(rows)


def test_roofline_flop_count_and_fma_peak():
    """benchmarks/cpu_profile/roofline.py: the FLOP count it divides by the peak (forward =
    input projection + recurrent product; backward twice that), and the FMA-peak probe, which
    needs a C compiler and reports a positive rate (or None without one)."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).parents[1] / "benchmarks" / "cpu_profile" / "roofline.py"
    spec = importlib.util.spec_from_file_location("roofline", path)
    roofline = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(roofline)
    T, B, n_in, H = roofline.SHAPES["fastrnns"]
    fwd = 2 * T * B * 4 * H * n_in + 2 * T * B * 4 * H * H
    assert roofline.layer_flops("lstm", "fastrnns", "infer") == fwd
    assert roofline.layer_flops("lstm", "fastrnns", "fwd+bwd") == 3 * fwd
    assert roofline.layer_flops("gru", "fastrnns", "infer") == fwd * 3 // 4
    peak = roofline.fma_peak(1)
    assert peak is None or peak > 0
