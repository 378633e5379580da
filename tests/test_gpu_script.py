"""scripts/gpu_check.sh, proven on the CPU: its dry run runs every step in order with stand-ins
for what needs a GPU, and one step is made to outlast its limit.

The dry run (``scripts/gpu_check.sh --dry-run``; CI runs it too) is started once here with the
anchors step stalled after three rows (``FUSED_RNN_PATHS_STALL_AFTER``) under a 25 s limit, and
the checks read what it left: the steps and their own limits, the summary and the one archive
refreshed after every step, the stalled step's partial rows, the later steps' results, and the
failure listed in the summary. Unit checks cover the summary builder, benchmarks.paths (a
refused backward keeps the forward's row; a wrong row is marked, still timed), the grid's
per-case CSV and budget, and setup.py's FUSED_RNN_REQUIRE_CUDA.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from benchmarks import paths
from benchmarks.cases import Case
from benchmarks.check import Oracle, make_inputs, make_torch_module
from benchmarks.providers import Built, FusedProvider, TorchProvider
from benchmarks.runner import run_grid
from benchmarks.timing import TimingConfig

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
STEPS = ["env", "build", "kernels", "anchors", "parity", "gpu_tests", "grid", "sanitizer"]
STALL_ROWS, STALL_LIMIT = 3, 25

needs_tools = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("bash", "timeout", "tar")), reason="needs bash, timeout, tar"
)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """(exit status, stdout, OUT_DIR, {archive member: bytes}) of one stalled dry run."""
    tmp = tmp_path_factory.mktemp("gpu_check")
    out = tmp / "out"
    env = dict(
        os.environ,
        PYTHON=sys.executable,
        PYTHONPATH=str(ROOT),
        GPU_CHECK_WORK=str(tmp / "work"),
        GPU_CHECK_LIMIT_ANCHORS=str(STALL_LIMIT),
        FUSED_RNN_PATHS_STALL_AFTER=str(STALL_ROWS),
        OMP_NUM_THREADS="1",
    )
    env.pop("OUT", None)
    r = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    with tarfile.open(out / "gpu_check.tgz") as tar:
        members = {
            m.name.removeprefix("./"): tar.extractfile(m).read() for m in tar if m.isfile()
        }  # fmt: skip
    return r.returncode, r.stdout + r.stderr, out, members


def _status(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text), delimiter="\t"))


@needs_tools
def test_every_step_runs_in_order_under_its_own_limit(dry_run):
    rc, log, out, files = dry_run
    rows = _status((out / "status.tsv").read_text())
    assert [r["step"] for r in rows] == STEPS, log[-3000:]
    for r in rows:
        assert int(r["limit"]) > 0, r
        if r["step"] != "anchors":
            assert r["status"] == "ok", (r, files.get(f"{r['step']}.log", b"")[-2000:])
    assert int(rows[STEPS.index("anchors")]["limit"]) == STALL_LIMIT


@needs_tools
def test_summary_and_one_archive_refreshed_after_every_step(dry_run):
    rc, log, out, files = dry_run
    # Each step's refresh in order, and only the three files in OUT_DIR (8 come back from $OUT).
    refreshed = [ln.rsplit(" after ", 1)[1] for ln in log.splitlines() if ln.startswith("--- refr")]
    assert refreshed == STEPS
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.tgz", "status.tsv", "summary.md"]
    for step in STEPS:
        assert f"{step}.log" in files
    for name in ("kernels.xml", "parity.xml", "gpu_tests.xml", "anchors.csv", "env.sh"):
        assert name in files, sorted(files)
    assert files["summary.md"].decode() == (out / "summary.md").read_text()


@needs_tools
def test_a_step_stopped_by_its_limit_keeps_its_rows_and_the_others_run(dry_run):
    rc, log, out, files = dry_run
    rows = {r["step"]: r for r in _status((out / "status.tsv").read_text())}
    assert rows["anchors"]["status"] == "timeout" and rows["anchors"]["exit"] == "124"
    anchors = list(csv.DictReader(io.StringIO(files["anchors.csv"].decode())))
    # The rows finished before the stall, then the one that SIGINT stopped.
    assert [r["status"] for r in anchors[:STALL_ROWS]] == ["ok"] * STALL_ROWS
    assert anchors[STALL_ROWS]["status"] == "interrupted" and len(anchors) == STALL_ROWS + 1
    for r in anchors[:STALL_ROWS]:
        assert float(r["median_ms"]) > 0 and float(r["err"]) <= float(r["tol"])
    # Earlier and later steps' results are all there.
    assert b"passed" in files["kernels.log"]
    grid = list(csv.DictReader(io.StringIO(files["bench/results.csv"].decode())))
    assert {r["case"] for r in grid} == {"lstm-B16-T32-I64-H64-fp32", "gru-B16-T32-I64-H64-fp32"}
    assert b"lstm float32 on cpu: ok" in files["sanitizer.log"]


@needs_tools
def test_failures_are_listed_in_the_summary(dry_run):
    rc, log, out, files = dry_run
    assert rc == 1
    summary = (out / "summary.md").read_text()
    failures = summary.split("## Failures", 1)[1].split("\n## ", 1)[0]
    assert "**anchors**: timeout" in failures
    assert "interrupted" in summary  # the stopped row is in the anchor table
    assert "**timeout**" in summary.split("## Failures")[0]  # and in the step table


def test_summary_names_failed_tests_and_compiler_errors(tmp_path):
    (tmp_path / "status.tsv").write_text(
        "step\tstatus\texit\tseconds\tlimit\tnote\n"
        "build\tfailed\t1\t50\t300\t\n"
        "kernels\ttimeout\t124\t180\t180\tstopped by its 180s limit\n"
    )
    (tmp_path / "build.log").write_text(
        "x\ncsrc/cuda/persistent.cu(12): error: identifier undefined\n" + "ninja: stop\n" * 50
    )
    # No junit xml (killed): the -v lines of the log name the failures.
    (tmp_path / "kernels.log").write_text(
        "tests/test_ops.py::test_a[lstm] PASSED\n"
        "[gw1] [ 50%] FAILED tests/test_ops.py::test_b[gru] \n"
        "FAILED tests/test_ops.py::test_b[gru] - AssertionError: err 1e-1\n"
    )
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_summary.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    failures = r.stdout.split("## Failures", 1)[1]
    assert "**build**: failed" in failures and "persistent.cu(12): error:" in failures
    assert "**kernels**: timeout" in failures and "test_b[gru]" in failures


def _one_rep(device="cpu") -> TimingConfig:
    return TimingConfig(warmup=1, target_s=0.0, min_reps=2, max_reps=2)


class _RefuseBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y):
        return y.view_as(y)

    @staticmethod
    def backward(ctx, gy):
        raise ValueError("fused_rnn triton: the resident path cannot run this case: too big")


def _rows_of(tmp_path, builder) -> list[dict]:
    """benchmarks.paths' rows of one variant whose provider ``builder`` makes."""
    case = Case("lstm", 3, 6, 4, 5, tags=("anchor",))
    module = make_torch_module(case, "cpu", 0)
    inputs = make_inputs(case, "cpu", 0)
    oracle = Oracle(case, module, inputs)
    out = paths.RowWriter(tmp_path / "a.csv", {"commit": "x"})
    v = paths.Variant("odd", "reference")
    prov = FusedProvider("reference")
    prov.build = lambda torch_module, c: builder(torch_module)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(paths, "FusedProvider", lambda name: prov)
        paths.run_variant(case, v, module, inputs, oracle, "cpu", _one_rep(), out, {}, False)
    out.f.close()
    return list(csv.DictReader((tmp_path / "a.csv").open()))


def test_a_refused_backward_keeps_the_forward_row(tmp_path):
    def builder(m):
        def fn(x, hx):
            y, h = m(x, hx)
            return _RefuseBackward.apply(y), h

        return Built(fn, dict(m.named_parameters()))

    infer, train = _rows_of(tmp_path, builder)
    assert infer["mode"] == "infer" and infer["status"] == "ok" and float(infer["median_ms"]) > 0
    assert float(infer["err"]) <= float(infer["tol"]) and infer["err_tensor"]
    assert train["mode"] == "fwd_bwd" and train["status"] == "refused"
    assert "cannot run this case" in train["detail"] and train["median_ms"] == ""


def test_a_wrong_row_is_marked_and_still_timed(tmp_path):
    def builder(m):
        return Built(lambda x, hx: (m(x, hx)[0] * 1.01, m(x, hx)[1]), dict(m.named_parameters()))

    infer, train = _rows_of(tmp_path, builder)
    for r in (infer, train):
        assert r["status"] == "WRONG" and float(r["err"]) > float(r["tol"])
        assert float(r["median_ms"]) > 0


def test_variants_time_every_path_and_both_tf32_settings():
    half = [
        v.name for v in paths.variants(Case("lstm", 16, 1024, 768, 768, dtype="bfloat16"), "cuda")
    ]
    assert half[0] == "cudnn"
    cuda = ("auto", "general", "persistent", "persistent-bwd_persistent",
            "persistent-mma-bwd_persistent")  # fmt: skip
    for name in [f"cuda-{c}" for c in cuda] + [
        f"triton-{p}" for p in ("auto", *paths.TRITON_PATHS)
    ]:
        assert name in half
    fp32 = paths.variants(Case("gru", 64, 100, 512, 512), "cuda")
    assert [(v.name, v.tf32) for v in fp32[:2]] == [
        ("cudnn-tf32off", False),
        ("cudnn-tf32on", True),
    ]
    assert not any("mma" in v.name for v in fp32)
    # The switches hold while a variant runs and are restored after.
    auto = next(v for v in fp32 if v.name == "triton-auto")
    forced = next(v for v in fp32 if v.name == "triton-step")
    before = (os.environ.get(paths.TRITON_ENV), torch.backends.cudnn.allow_tf32)
    with forced.applied():
        assert os.environ[paths.TRITON_ENV] == "step"
        with auto.applied():
            assert paths.TRITON_ENV not in os.environ
        assert os.environ[paths.TRITON_ENV] == "step"
    with fp32[1].applied():
        assert torch.backends.cudnn.allow_tf32 is True
    assert (os.environ.get(paths.TRITON_ENV), torch.backends.cudnn.allow_tf32) == before
    assert [c.cell for c in paths.anchors()][:2] == paths.ANCHOR_CELLS[:2]


def test_grid_writes_each_case_as_it_ends_and_skips_what_does_not_fit():
    cases = [Case("lstm", 2, 4, 3, 4), Case("gru", 2, 4, 3, 4), Case("lstm", 2, 5, 3, 4)]
    seen = []
    results, left = run_grid(
        cases, [TorchProvider()], "cpu", _one_rep(), budget_s=60.0, log=lambda *_: None,
        estimate=lambda c: 1e6 if c.cell == "gru" else 0.0, on_case=lambda rs: seen.append(rs),
    )  # fmt: skip
    assert [c.id for c in left] == [cases[1].id]  # too costly for the budget; the next one ran
    assert [rs[0].case.id for rs in seen] == [cases[0].id, cases[2].id]


def test_setup_fails_loudly_when_cuda_is_required_but_cannot_be_built():
    if torch.version.cuda is not None:
        pytest.skip("this torch has CUDA: the refusal is for CPU-only builds")
    env = dict(os.environ, FUSED_RNN_REQUIRE_CUDA="1")
    r = subprocess.run(
        [sys.executable, "setup.py", "--name"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert r.returncode != 0
    assert "FUSED_RNN_REQUIRE_CUDA=1 but the CUDA ops cannot be built" in r.stderr + r.stdout
    assert "torch.version.cuda is None" in r.stderr + r.stdout
