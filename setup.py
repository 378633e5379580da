"""fused_rnn: fused LSTM / GRU kernels for PyTorch.

Builds the compiled extension fused_rnn._C ahead of time (nothing is compiled at first use):
  - always the C++ CPU ops (csrc/ops.cpp, csrc/cpu/*.cpp) as a CppExtension;
  - plus the CUDA sources (csrc/cuda/*.cu, csrc/cuda/*.cpp) as a CUDAExtension when torch was built
    with CUDA and nvcc is found.
Environment switches:
  FUSED_RNN_NO_EXT=1        install the pure-Python part only (backends "reference" / "triton").
  FUSED_RNN_CPU_ISA=default compile the CPU kernels for the baseline ISA instead of AVX2+FMA
                            (picked automatically when the build machine lacks AVX2).
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


def _cpu_isa_flags() -> list[str]:
    """AVX2+FMA flags for ATen's Vectorized<> (its exp / tanh then map to Sleef's vector
    functions) when the build machine has them; the kernels check the CPU again at run time."""
    import torch

    if os.environ.get("FUSED_RNN_CPU_ISA", "").lower() == "default":
        return []
    if platform.machine() not in ("x86_64", "AMD64"):
        return []
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        return []
    return ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]


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
    cxx = ["-O3", "-g0", *_cpu_isa_flags(), *omp]
    sources = ["csrc/ops.cpp", *_sources("csrc/cpu/*.cpp")]
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
    return [ext], {"build_ext": cpp_extension.BuildExtension}


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
