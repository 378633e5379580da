// The per-time-step GEMM of the CPU kernels: C (m, n) = beta * C + A (m, k) @ op(W), where W is
// the recurrent weight, the same for every step of one op call.
//
// A plain BLAS sgemm re-packs W (4H x H, e.g. 4 MB at H = 512) into its panel layout on every
// call, i.e. every time step; profiles showed that copy at ~10% of the LSTM's time. When the
// torch build exports MKL's packed-GEMM API (x86 builds with MKL, float32), W is packed once per
// op call and every step runs cblas_sgemm_compute on the packed copy. Elsewhere (no MKL symbols,
// float64, or FUSED_RNN_CPU_PACKED_GEMM=0) it falls back to at::addmm_ / at::mm_out on
// preallocated outputs. Either way nothing is allocated inside the time loop.
#pragma once

#include <ATen/ATen.h>

#include <cstdlib>
#include <cstring>
#include <limits>
#include <type_traits>

// MKL's packed-GEMM entry points, resolved at load time from libtorch_cpu when it has them (weak:
// null otherwise). MKL's LP64 interface: MKL_INT is int, the CBLAS enums are ints.
extern "C" {
size_t cblas_sgemm_pack_get_size(int identifier, int m, int n, int k) __attribute__((weak));
void cblas_sgemm_pack(int layout, int identifier, int trans, int m, int n, int k, float alpha,
                      const float* src, int ld, float* dest) __attribute__((weak));
void cblas_sgemm_compute(int layout, int transa, int transb, int m, int n, int k, const float* a,
                         int lda, const float* b, int ldb, float beta, float* c, int ldc)
    __attribute__((weak));
}

namespace fused_rnn::cpu {

namespace mkl {
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112, kPacked = 151, kBMatrix = 162;
}

inline bool packed_gemm_enabled() {
  static const bool on = [] {
    const char* env = std::getenv("FUSED_RNN_CPU_PACKED_GEMM");
    const bool off = env != nullptr && std::strcmp(env, "0") == 0;
    return !off && cblas_sgemm_pack_get_size && cblas_sgemm_pack && cblas_sgemm_compute;
  }();
  return on;
}

template <typename scalar_t>
class StepGemm {
 public:
  // w: (n, k) used as W^T when `transpose`, else (k, n); m: rows of every A / C of this call.
  StepGemm(const at::Tensor& w, bool transpose, int64_t m)
      : w_(w), transpose_(transpose), m_(m), k_(transpose ? w.size(1) : w.size(0)),
        n_(transpose ? w.size(0) : w.size(1)) {
    constexpr int64_t kMax = std::numeric_limits<int>::max();
    if (std::is_same_v<scalar_t, float> && packed_gemm_enabled() && m_ <= kMax && n_ <= kMax &&
        k_ <= kMax && w.numel() <= kMax) {
      const size_t bytes = cblas_sgemm_pack_get_size(mkl::kBMatrix, m_, n_, k_);
      packed_ = at::empty({static_cast<int64_t>(bytes / sizeof(float)) + 1}, w.options());
      cblas_sgemm_pack(mkl::kRowMajor, mkl::kBMatrix, transpose ? mkl::kTrans : mkl::kNoTrans,
                       m_, n_, k_, 1.0f, reinterpret_cast<const float*>(w.data_ptr()),
                       static_cast<int>(w.size(1)), packed_.data_ptr<float>());
    }
  }

  // c (m, n) contiguous = beta * c + a (m, k) contiguous @ op(W); beta is 0 or 1.
  void run(const at::Tensor& a, const at::Tensor& c, bool accumulate) const {
    if (packed_.defined()) {
      cblas_sgemm_compute(mkl::kRowMajor, mkl::kNoTrans, mkl::kPacked, m_, n_, k_,
                          reinterpret_cast<const float*>(a.data_ptr()), k_,
                          packed_.data_ptr<float>(), n_, accumulate ? 1.0f : 0.0f,
                          reinterpret_cast<float*>(c.data_ptr()), n_);
      return;
    }
    const at::Tensor op_w = transpose_ ? w_.t() : w_;
    if (accumulate) {
      c.addmm_(a, op_w);
    } else {
      at::Tensor out = c;  // a handle: mm_out takes a mutable reference
      at::mm_out(out, a, op_w);
    }
  }

 private:
  at::Tensor w_;
  bool transpose_;
  int64_t m_, k_, n_;
  at::Tensor packed_;  // MKL's packed copy of op(W), undefined on the fallback path
};

}  // namespace fused_rnn::cpu
