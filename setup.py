"""fused_rnn: fused LSTM / GRU kernels for PyTorch.

Builds the compiled extension fused_rnn._C ahead of time (nothing is compiled at first use):
  - always the C++ CPU ops (csrc/ops.cpp, csrc/cpu/*.cpp) as a CppExtension;
  - plus the CUDA sources (csrc/cuda/*.cu, csrc/cuda/*.cpp) as a CUDAExtension when torch was built
    with CUDA and nvcc is found.
Environment switches:
  FUSED_RNN_NO_EXT=1        install the pure-Python part only (backends "reference" / "triton").
  FUSED_RNN_NO_OPENMP=1    build without -fopenmp (then at::parallel_for in the kernels is serial).
  FUSED_RNN_REQUIRE_CUDA=1 fail (instead of building the CPU ops alone) when the CUDA sources
                            cannot be built here: torch without CUDA, or no nvcc.
  TORCH_CUDA_ARCH_LIST      the GPU architectures, torch's own switch (e.g. "9.0" or "8.0;9.0");
                            unset: sm_80 and sm_90.
Build: pip install --no-build-isolation -e .  (a wheel: pip wheel --no-deps --no-build-isolation .)
The build stamps the torch version it compiled against into fused_rnn/_build_info.py; at run time
fused_rnn.ops refuses (with both versions and the rebuild command) to load an extension built for
another torch.
"""

import glob
import os
import platform
import shutil
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _sources(pattern: str) -> list[str]:
    # Relative paths: setuptools rejects absolute ones in editable builds.
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


# CPU translation units compiled for the baseline x86-64 ISA; every other csrc/cpu/*.cpp is a
# kernel TU (ATen's Vectorized<> pointwise code) compiled for AVX2+FMA.
BASELINE_CPU_TUS = ("csrc/cpu/dispatch.cpp", "csrc/cpu/isa.cpp", "csrc/cpu/panel_avx2.cpp")


def _is_x86() -> bool:
    return platform.machine() in ("x86_64", "AMD64")


def _tu_isa_flags(source: str) -> list[str]:
    """ISA flags of one translation unit. One build must load and run on any x86-64 CPU,
    whatever the build machine has:
      - csrc/ops.cpp (the op schemas, loaded at import), dispatch.cpp (the CPU kernels'
        registration and the CPU check in front of them), isa.cpp (CPU detection) and
        panel_avx2.cpp (whose AVX2 functions carry their own target attribute) are baseline;
      - the kernel TUs (lstm.cpp, gru.cpp, ...) are AVX2+FMA, so ATen's Vectorized<> is its AVX2
        version (in its own inline namespace at::vec::AVX2) with Sleef's vector exp: a portable
        build of them measured 2-4x slower at B=16, H=128. They run only after dispatch.cpp
        found AVX2+FMA on the CPU; elsewhere the op raises and fused_rnn's auto policy runs
        torch's own op ("native"). Op registration must stay out of them (dispatch.cpp).
    The baseline objects are linked first, so an inline function that a baseline TU and a
    kernel TU both emit keeps its baseline copy (the linker keeps the first)."""
    rel = os.path.relpath(os.path.abspath(source), ROOT).replace(os.sep, "/")
    kernel = rel.startswith("csrc/cpu/") and rel.endswith(".cpp") and rel not in BASELINE_CPU_TUS
    if kernel and _is_x86():
        return ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    return ["-DCPU_CAPABILITY=DEFAULT"]


def _build_ext_class():
    """torch's BuildExtension with per-source ISA flags (_tu_isa_flags). Without ninja: its
    ninja file has one set of flags for every source."""
    from torch.utils import cpp_extension

    base = cpp_extension.BuildExtension.with_options(use_ninja=False)

    class BuildExt(base):
        def build_extension(self, ext):
            compile_one = self.compiler._compile

            def with_isa(obj, src, ext_, cc_args, extra_postargs, pp_opts):
                flags = _tu_isa_flags(src)
                if isinstance(extra_postargs, dict):
                    extra_postargs = {**extra_postargs, "cxx": extra_postargs["cxx"] + flags}
                elif not src.endswith(".cu"):
                    extra_postargs = list(extra_postargs) + flags
                return compile_one(obj, src, ext_, cc_args, extra_postargs, pp_opts)

            link = self.compiler.link_shared_object

            def baseline_first(objects, *args, **kwargs):
                # setuptools sorts the sources; the link order is what decides which copy of a
                # shared inline function is kept.
                def is_kernel(o):
                    src = os.path.splitext(o.replace(os.sep, "/").split("/csrc/", 1)[-1])[0]
                    return "-mavx2" in _tu_isa_flags(os.path.join(ROOT, "csrc", src + ".cpp"))

                objects = sorted(objects, key=is_kernel)  # stable: baseline, then kernels
                return link(objects, *args, **kwargs)

            self.compiler._compile = with_isa
            self.compiler.link_shared_object = baseline_first
            try:
                super().build_extension(ext)
            finally:
                self.compiler._compile = compile_one
                self.compiler.link_shared_object = link

    return BuildExt


def _openmp_flags() -> list[str]:
    """-fopenmp when torch's intra-op pool is OpenMP: at::parallel_for is a header template whose
    `#pragma omp parallel` is silently ignored without it, i.e. every parallel_for in our kernels
    would run on one thread. The libgomp.so.1 this links against resolves at run time to the copy
    torch has already loaded (same SONAME), so there is one OpenMP runtime and one thread pool."""
    import torch

    if os.environ.get("FUSED_RNN_NO_OPENMP", "") == "1" or not torch.backends.openmp.is_available():
        return []
    if platform.system() != "Linux":
        return []
    return ["-fopenmp"]


def _cuda_missing(torch_cuda: str | None, nvcc: str | None, cuda_sources: list[str]) -> str:
    """Why the CUDA sources cannot be built here ("" when they can)."""
    why = []
    if torch_cuda is None:
        why.append("this torch was built without CUDA (torch.version.cuda is None)")
    if not nvcc:
        why.append("nvcc is neither on PATH nor in CUDA_HOME/bin")
    if not cuda_sources:
        why.append("no csrc/cuda/*.cu sources")
    return "; ".join(why)


def _cuda_arch_flags() -> list[str]:
    """No -gencode when TORCH_CUDA_ARCH_LIST is set: torch's BuildExtension then derives them
    from it (it adds its own only when the nvcc flags name no arch). Unset: sm_80 and sm_90, so
    that a build on a machine without a GPU does not depend on what torch would guess."""
    if os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip():
        return []
    return ["-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90"]


def _extensions():
    if os.environ.get("FUSED_RNN_NO_EXT", "") == "1":
        return [], {}
    import torch
    from torch.utils import cpp_extension

    # No -ffast-math: NaN and inf must propagate as in torch. (py_limited_api=True below makes
    # torch's build define Py_LIMITED_API.)
    omp = _openmp_flags()
    cxx = ["-O3", "-g0", *omp]
    cpu = _sources("csrc/cpu/*.cpp")
    baseline = [s for s in cpu if s.replace(os.sep, "/") in BASELINE_CPU_TUS]
    sources = ["csrc/ops.cpp", *baseline, *(s for s in cpu if s not in baseline)]
    home = cpp_extension.CUDA_HOME
    nvcc = shutil.which("nvcc") or (home and shutil.which(os.path.join(home, "bin", "nvcc")))
    cuda_sources = _sources("csrc/cuda/*.cu") + _sources("csrc/cuda/*.cpp")
    missing = _cuda_missing(torch.version.cuda, nvcc, cuda_sources)
    if missing and os.environ.get("FUSED_RNN_REQUIRE_CUDA", "") == "1":
        # scripts/gpu_check.sh sets this: a GPU run must not quietly test a CPU-only build.
        raise SystemExit(f"FUSED_RNN_REQUIRE_CUDA=1 but the CUDA ops cannot be built: {missing}")
    if not missing:
        ext = cpp_extension.CUDAExtension(
            "fused_rnn._C",
            sources + cuda_sources,
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", *_cuda_arch_flags()]},
            extra_link_args=omp,
            py_limited_api=True,
        )
    else:
        ext = cpp_extension.CppExtension(
            "fused_rnn._C",
            sources,
            extra_compile_args={"cxx": cxx},
            extra_link_args=omp,
            py_limited_api=True,
        )
    return [ext], {"build_ext": _build_ext_class()}


def _stamp_torch_version() -> None:
    """Write fused_rnn/_build_info.py: the torch this build compiles fused_rnn._C against. Written
    before setuptools copies the package (build_py), so wheels and in-place builds carry it."""
    import torch

    with open(os.path.join(ROOT, "fused_rnn", "_build_info.py"), "w") as f:
        f.write(
            '"""Written by setup.py at build time; do not edit."""\n\n'
            "# The torch version fused_rnn._C was compiled against.\n"
            f'TORCH_VERSION = "{torch.__version__}"\n'
        )


ext_modules, cmdclass = _extensions()
if ext_modules and "sdist" not in sys.argv:  # an sdist compiles nothing: no stamp to ship
    _stamp_torch_version()

setup(
    name="fused_rnn",
    version="0.1.0",
    description="Fused LSTM and GRU kernels (C++, CUDA, Triton) as drop-in torch.nn modules",
    packages=find_packages(include=["fused_rnn", "fused_rnn.*"]),
    package_data={"fused_rnn": ["py.typed"]},
    python_requires=">=3.10",
    install_requires=["torch>=2.4"],
    extras_require={"triton": ["triton>=3.0"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    options={"bdist_wheel": {"py_limited_api": "cp39"}} if ext_modules else {},
)
