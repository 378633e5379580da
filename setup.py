"""fused_rnn: fused LSTM / GRU kernels for PyTorch.

Builds the compiled extension fused_rnn._C ahead of time (nothing is compiled at first use):
  - always the C++ CPU ops (csrc/ops.cpp, csrc/cpu/*.cpp) as a CppExtension;
  - plus the CUDA sources (csrc/cuda/*.cu, csrc/cuda/*.cpp) as a CUDAExtension when torch was built
    with CUDA and nvcc is found.
Environment switches:
  FUSED_RNN_NO_EXT=1        install the pure-Python part only (backends "reference" / "triton").
  FUSED_RNN_NO_OPENMP=1    build without -fopenmp (then at::parallel_for in the kernels is serial).
Build: pip install --no-build-isolation -e .
"""

import glob
import os
import platform
import shutil

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
    if torch.version.cuda is not None and nvcc and cuda_sources:
        ext = cpp_extension.CUDAExtension(
            "fused_rnn._C",
            sources + cuda_sources,
            extra_compile_args={
                "cxx": cxx,
                "nvcc": [
                    "-O3",
                    "-gencode=arch=compute_80,code=sm_80",
                    "-gencode=arch=compute_90,code=sm_90",
                ],
            },
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


ext_modules, cmdclass = _extensions()

setup(
    name="fused_rnn",
    version="0.1.0",
    description="Fused LSTM and GRU kernels (C++, CUDA, Triton) as drop-in torch.nn modules",
    packages=find_packages(include=["fused_rnn", "fused_rnn.*"]),
    python_requires=">=3.10",
    install_requires=["torch>=2.4"],
    extras_require={"triton": ["triton>=3.0"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    options={"bdist_wheel": {"py_limited_api": "cp39"}} if ext_modules else {},
)
