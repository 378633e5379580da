// Test-only host implementation of the general path's launchers (launchers.h): the same element
// functions as the CUDA kernels (step_kernels.cuh), run by g++ in a loop over (b, j). Linked with
// bindings.cpp built with -DFUSED_RNN_CUDA_EMULATE by tests/test_cuda_compile.py, so the whole
// general path (GEMM order, masking, saved layouts, backward recurrence) is checked against
// torch on a CPU-only machine. fp16 / bf16 are not emulated (their conversions need cuda_fp16.h
// device code); they are covered by the GPU tests. Not part of the built extension: setup.py
// compiles csrc/cuda/*.cpp only, not this sub-folder.
#include <string>

#include "../step_kernels.cuh"

namespace fused_rnn {
namespace cuda {
namespace {

int cols(const FwdStep& p) { return p.H; }
int cols(const BwdStep& p) { return p.H; }
int cols(const ProjFwdStep& p) { return p.P; }
int cols(const ProjBwdStep& p) { return p.P; }

template <class P, class Fn32, class Fn64>
std::string run(const P& p, Fn32 f32, Fn64 f64) {
  if (p.io != DType::kF32 && p.io != DType::kF64) {
    return "host emulation supports float32 and float64 only";
  }
  for (int b = 0; b < p.B; ++b) {
    for (int j = 0; j < cols(p); ++j) {
      if (p.io == DType::kF32) {
        f32(p, b, j);
      } else {
        f64(p, b, j);
      }
    }
  }
  return "";
}

}  // namespace

std::string launch_fwd_step(Cell cell, const FwdStep& p, void*) {
  return visit_cell(cell, [&](auto c) {
    using C = decltype(c);
    return run(p, fwd_elem<C, float>, fwd_elem<C, double>);
  });
}
std::string launch_bwd_step(Cell cell, const BwdStep& p, void*) {
  return visit_cell(cell, [&](auto c) {
    using C = decltype(c);
    return run(p, bwd_elem<C, float>, bwd_elem<C, double>);
  });
}
std::string launch_proj_fwd_step(const ProjFwdStep& p, void*) {
  return run(p, proj_fwd_elem<float>, proj_fwd_elem<double>);
}
std::string launch_proj_bwd_step(const ProjBwdStep& p, void*) {
  return run(p, proj_bwd_elem<float>, proj_bwd_elem<double>);
}

}  // namespace cuda
}  // namespace fused_rnn
