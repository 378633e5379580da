// General path: the fused pointwise kernel of one time step (any cell, forward / backward, and
// the LSTM projection's masked hand-over). The per-step recurrent GEMM runs before it (forward)
// or after it (backward) through cuBLAS, issued by bindings.cpp on the same stream. One thread
// per (b, j); what a thread does is in step_kernels.cuh. Shapes and aliasing: launchers.h.
// Torch-free: compiles with nvcc alone.
#include <cuda_runtime.h>

#include "launchers.h"
#include "step_kernels.cuh"

namespace fused_rnn {
namespace cuda {
namespace {

constexpr int kThreads = 256;

// Columns of the (B, cols) element grid of each step struct.
int cols(const FwdStep& p) { return p.H; }
int cols(const BwdStep& p) { return p.H; }
int cols(const ProjFwdStep& p) { return p.P; }
int cols(const ProjBwdStep& p) { return p.P; }

// A 1-D grid over the B*cols elements, columns fastest, so a warp touches consecutive columns of
// one sequence: coalesced loads and stores.
template <class P, void (*Elem)(const P&, int, int)>
__global__ void __launch_bounds__(kThreads) step_kernel(const P p, int n_cols) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e < static_cast<int64_t>(p.B) * n_cols) {
    Elem(p, static_cast<int>(e / n_cols), static_cast<int>(e % n_cols));
  }
}

// ElemOf<T>::fn is the element function for io type T.
template <class P, template <class> class ElemOf>
std::string launch(const P& p, void* stream) {
  const int n_cols = cols(p);
  if (p.B <= 0 || n_cols <= 0) return "";
  const int64_t n = static_cast<int64_t>(p.B) * n_cols;
  if ((n + kThreads - 1) / kThreads > 0x7fffffff) return "B * H is too large for one grid";
  const dim3 grid(static_cast<unsigned>((n + kThreads - 1) / kThreads));
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (p.io) {
    case DType::kF32:
      step_kernel<P, ElemOf<float>::fn><<<grid, kThreads, 0, s>>>(p, n_cols);
      break;
    case DType::kF64:
      step_kernel<P, ElemOf<double>::fn><<<grid, kThreads, 0, s>>>(p, n_cols);
      break;
    case DType::kF16:
      step_kernel<P, ElemOf<__half>::fn><<<grid, kThreads, 0, s>>>(p, n_cols);
      break;
    case DType::kBF16:
      step_kernel<P, ElemOf<__nv_bfloat16>::fn><<<grid, kThreads, 0, s>>>(p, n_cols);
      break;
    default:
      return "unsupported io dtype code " + std::to_string(static_cast<int>(p.io));
  }
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? std::string() : std::string(cudaGetErrorString(err));
}

// Adapters turning the element-function templates into something `launch` can instantiate.
template <class C>
struct FwdOf {
  template <class T>
  struct Elem {
    static constexpr void (*fn)(const FwdStep&, int, int) = fwd_elem<C, T>;
  };
};
template <class C>
struct BwdOf {
  template <class T>
  struct Elem {
    static constexpr void (*fn)(const BwdStep&, int, int) = bwd_elem<C, T>;
  };
};
template <class T>
struct ProjFwdElem {
  static constexpr void (*fn)(const ProjFwdStep&, int, int) = proj_fwd_elem<T>;
};
template <class T>
struct ProjBwdElem {
  static constexpr void (*fn)(const ProjBwdStep&, int, int) = proj_bwd_elem<T>;
};

}  // namespace

std::string launch_fwd_step(Cell cell, const FwdStep& p, void* stream) {
  return visit_cell(cell, [&](auto c) {
    return launch<FwdStep, FwdOf<decltype(c)>::template Elem>(p, stream);
  });
}
std::string launch_bwd_step(Cell cell, const BwdStep& p, void* stream) {
  return visit_cell(cell, [&](auto c) {
    return launch<BwdStep, BwdOf<decltype(c)>::template Elem>(p, stream);
  });
}
std::string launch_proj_fwd_step(const ProjFwdStep& p, void* stream) {
  return launch<ProjFwdStep, ProjFwdElem>(p, stream);
}
std::string launch_proj_bwd_step(const ProjBwdStep& p, void* stream) {
  return launch<ProjBwdStep, ProjBwdElem>(p, stream);
}

}  // namespace cuda
}  // namespace fused_rnn
