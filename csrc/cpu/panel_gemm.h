// The GEMMs of the CPU kernels: C[:, cols] (+)= A (m, k) @ op(W)[:, cols], where W is one of the
// op call's weights (W_ih or W_hh) and `cols` one thread's share of the output columns.
//
// Why not BLAS: on the project's CPU (2-core AMD EPYC, AVX2) MKL's sgemm reaches ~52 GFLOP/s with
// 2 threads on the per-step shape (64 x 512) @ (512 x 2048) and ~62 on the input projection, while
// this register-tiled kernel on weights packed once per op call reaches 73-76 (the FMA peak of the
// two cores is ~78); see docs/cpp_backend.md. Each thread runs its own columns single-threaded,
// so a time step is one parallel region whose barrier is the step's only synchronisation.
//
// Packing: op(W) (k, groups * width) is stored as panels of kPanel = 16 columns (two AVX2
// vectors), k-major: panel q of group g holds op(W)[kk, g * width + 16q + j] at
// [((q * groups + g) * k + kk) * 16 + j], zero-filled past the group's width, so a gate block
// (group) never shares a panel with the next one. Panels are ordered unit-major (q, then g): the
// columns a thread owns in every gate block -- units [u0, u1) of all groups -- are one contiguous
// run of panels, streamed (and prefetched) in one pass.
//
// The register kernel computes a 6 x 16 tile of C (12 accumulators, two B vectors, one broadcast
// of A), over k in blocks of kKC (a 16 KB B panel block stays in L1) and rows in blocks of kMC
// (the A block stays in L2). Sums run in k order with FMA, NaN and inf propagate (no fast-math).
//
// The register kernel is compiled for AVX2+FMA per function (panel_avx2.cpp) and runs only where
// isa.h's run-time check chose it. Elsewhere (float64, a CPU without AVX2+FMA, an AVX-512 CPU, or
// FUSED_RNN_CPU_ISA=generic) `run` calls at::mm_out / addmm_ (MKL / oneDNN through ATen) on
// strided views of the same column range, which inside a parallel region runs single-threaded as
// well.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <type_traits>

#include "cpu_common.h"
#include "isa.h"

namespace fused_rnn::cpu {

static_assert(kPanel == 16, "panel_avx2.cpp's register kernel is written for 16-column panels");


// One weight of an op call, ready for the chunked GEMMs. op(W) is (k, groups * width): W^T when
// `transposed` (w is (groups * width, k), the nn weight layout; used for x W_ih^T, h W_hh^T) and
// w itself otherwise (w is (k, groups * width); used for dG W_hh, dG W_ih). `w` must stay alive
// and unchanged while this object is used.
template <typename scalar_t>
class PanelWeights {
 public:
  PanelWeights(const at::Tensor& w, bool transposed, int64_t groups)
      : w_(w.data_ptr<scalar_t>()), transposed_(transposed), groups_(groups),
        k_(transposed ? w.size(1) : w.size(0)),
        width_((transposed ? w.size(0) : w.size(1)) / groups) {
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (panel_kernel_enabled()) pack(w);
    }
  }

  // For every group g: c[:, g * width + [n0, n1)] (+)= a (m x k, row stride lda) @
  // op(W)[:, g * width + [n0, n1)], with c the (m, ldc) row-major output (column 0 of group 0).
  // n0 must be a multiple of kPanel (chunk_range's boundaries are). Single-threaded: called
  // once per chunk of a parallel loop.
  void run(const scalar_t* a, int64_t lda, int64_t m, int64_t n0, int64_t n1, scalar_t* c,
           int64_t ldc, bool accumulate) const {
    const int64_t ncols = n1 - n0;
    if (m == 0 || ncols <= 0) return;
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (packed_.defined()) {
        const float* b = packed_.data_ptr<float>() + (n0 / kPanel) * groups_ * k_ * kPanel;
        panel_gemm_avx2(a, lda, m, k_, b, groups_, width_, ncols, c + n0, ldc, accumulate);
        return;
      }
    }
    for (int64_t g = 0; g < groups_; ++g) run_blas(a, lda, m, g, n0, ncols, c, ldc, accumulate);
  }

 private:
  void run_blas(const scalar_t* a, int64_t lda, int64_t m, int64_t g, int64_t n0, int64_t ncols,
                scalar_t* c, int64_t ldc, bool accumulate) const {
    scalar_t* cg = c + g * width_ + n0;
    // BLAS (through ATen) on strided views of the same memory: no copy of A, W or C.
    const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<scalar_t>::value);
    const int64_t n_total = groups_ * width_;
    const int64_t col = g * width_ + n0;
    auto* wp = const_cast<scalar_t*>(w_);
    const at::Tensor w_cols = transposed_
                                  ? at::from_blob(wp + col * k_, {ncols, k_}, {k_, 1}, opts).t()
                                  : at::from_blob(wp + col, {k_, ncols}, {n_total, 1}, opts);
    const at::Tensor a_t = at::from_blob(const_cast<scalar_t*>(a), {m, k_}, {lda, 1}, opts);
    at::Tensor c_t = at::from_blob(cg, {m, ncols}, {ldc, 1}, opts);
    if (accumulate) {
      c_t.addmm_(a_t, w_cols);
    } else {
      at::mm_out(c_t, a_t, w_cols);
    }
  }

  void pack(const at::Tensor& w) {
    const int64_t panels = (width_ + kPanel - 1) / kPanel;  // per group
    packed_ = at::empty({groups_ * panels * k_ * kPanel}, w.options());
    float* dst = packed_.data_ptr<float>();
    const float* src = w.data_ptr<float>();
    const int64_t k = k_, width = width_, groups = groups_, n_total = groups_ * width_;
    const bool tr = transposed_;
    // Threads only for big weights: a parallel region costs more than packing a small one.
    const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 17) / (k_ * kPanel));
    at::parallel_for(0, groups_ * panels, grain, [&](int64_t begin, int64_t end) {
      for (int64_t qg = begin; qg < end; ++qg) {
        const int64_t q = qg / groups, g = qg % groups;
        float* out = dst + qg * k * kPanel;
        const int64_t cols = std::min(kPanel, width - q * kPanel);  // valid columns of the panel
        const int64_t n = g * width + q * kPanel;                     // its first column in op(W)
        if (tr) {  // column n + j of op(W) is row n + j of w: an 8 x 8 blocked transpose
          // (a scalar gather took ~100 us per call for H = 128, more than a step's GEMMs)
          pack_panel_transposed_avx2(src + n * k, k, cols, out);
        } else {  // row kk of op(W) is row kk of w: 16 contiguous values per kk
          for (int64_t kk = 0; kk < k; ++kk) {
            for (int64_t j = 0; j < kPanel; ++j) {
              out[kk * kPanel + j] = j < cols ? src[kk * n_total + n + j] : 0.0f;
            }
          }
        }
      }
    });
  }

  const scalar_t* w_;
  bool transposed_;
  int64_t groups_, k_, width_;
  at::Tensor packed_;   // float32 panels, undefined on the library path
};

}  // namespace fused_rnn::cpu
