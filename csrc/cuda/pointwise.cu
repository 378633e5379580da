// General path: the fused pointwise kernel of one time step (LSTM / GRU, forward / backward).
// The per-step recurrent GEMM runs before it (forward) or after it (backward) through cuBLAS,
// issued by bindings.cpp on the same stream. One thread per (b, j); what a thread does is in
// step_kernels.cuh. Shapes and aliasing: launchers.h. Torch-free: compiles with nvcc alone.
#include <cuda_runtime.h>

#include "launchers.h"
#include "step_kernels.cuh"

namespace fused_rnn {
namespace cuda {
namespace {

constexpr int kThreads = 256;

// A 1-D grid over the B*H elements, j fastest, so a warp touches consecutive j of one
// sequence: coalesced loads and stores.
template <class P, void (*Elem)(const P&, int, int)>
__global__ void __launch_bounds__(kThreads) step_kernel(const P p) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e < static_cast<int64_t>(p.B) * p.H) {
    Elem(p, static_cast<int>(e / p.H), static_cast<int>(e % p.H));
  }
}

template <class P, template <class> class ElemOf>
std::string launch(const P& p, void* stream) {
  if (p.B <= 0 || p.H <= 0) return "";
  const int64_t n = static_cast<int64_t>(p.B) * p.H;
  if ((n + kThreads - 1) / kThreads > 0x7fffffff) return "B * H is too large for one grid";
  const dim3 grid(static_cast<unsigned>((n + kThreads - 1) / kThreads));
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (p.io) {
    case DType::kF32:
      step_kernel<P, ElemOf<float>::fn><<<grid, kThreads, 0, s>>>(p);
      break;
    case DType::kF64:
      step_kernel<P, ElemOf<double>::fn><<<grid, kThreads, 0, s>>>(p);
      break;
    case DType::kF16:
      step_kernel<P, ElemOf<__half>::fn><<<grid, kThreads, 0, s>>>(p);
      break;
    case DType::kBF16:
      step_kernel<P, ElemOf<__nv_bfloat16>::fn><<<grid, kThreads, 0, s>>>(p);
      break;
    default:
      return "unsupported io dtype code " + std::to_string(static_cast<int>(p.io));
  }
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? std::string() : std::string(cudaGetErrorString(err));
}

// Adapters turning the element-function templates into something `launch` can instantiate.
template <class T>
struct LstmFwdElem {
  static constexpr void (*fn)(const LstmFwdStep&, int, int) = lstm_fwd_elem<T>;
};
template <class T>
struct LstmBwdElem {
  static constexpr void (*fn)(const LstmBwdStep&, int, int) = lstm_bwd_elem<T>;
};
template <class T>
struct GruFwdElem {
  static constexpr void (*fn)(const GruFwdStep&, int, int) = gru_fwd_elem<T>;
};
template <class T>
struct GruBwdElem {
  static constexpr void (*fn)(const GruBwdStep&, int, int) = gru_bwd_elem<T>;
};

}  // namespace

std::string launch_lstm_fwd_step(const LstmFwdStep& p, void* stream) {
  return launch<LstmFwdStep, LstmFwdElem>(p, stream);
}
std::string launch_lstm_bwd_step(const LstmBwdStep& p, void* stream) {
  return launch<LstmBwdStep, LstmBwdElem>(p, stream);
}
std::string launch_gru_fwd_step(const GruFwdStep& p, void* stream) {
  return launch<GruFwdStep, GruFwdElem>(p, stream);
}
std::string launch_gru_bwd_step(const GruBwdStep& p, void* stream) {
  return launch<GruBwdStep, GruBwdElem>(p, stream);
}

}  // namespace cuda
}  // namespace fused_rnn
