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
// Elsewhere (float64, a build without AVX2, or FUSED_RNN_CPU_PANEL_GEMM=0) `run` calls at::mm_out /
// addmm_ (BLAS) on strided views of the same column range, which inside a parallel region runs
// single-threaded as well.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "cpu_common.h"

#if defined(CPU_CAPABILITY_AVX2) && defined(__x86_64__)
#include <immintrin.h>
#define FUSED_RNN_PANEL_KERNEL 1
#else
#define FUSED_RNN_PANEL_KERNEL 0
#endif

namespace fused_rnn::cpu {

inline bool panel_kernel_enabled() {
  static const bool on = [] {
    const char* env = std::getenv("FUSED_RNN_CPU_PANEL_GEMM");
    return FUSED_RNN_PANEL_KERNEL && !(env != nullptr && std::strcmp(env, "0") == 0);
  }();
  return on;
}

#if FUSED_RNN_PANEL_KERNEL
namespace panel {

constexpr int64_t kMR = 6;    // rows of C per register tile
constexpr int64_t kKC = 256;  // k per cache block
constexpr int64_t kMC = 72;   // rows per cache block (a multiple of kMR)

// c (MR rows of ldc, `nv` <= 16 valid columns) (+)= a (MR rows of lda, kb) @ b (kb x 16 packed).
// `next` (or null): the next panel's block, prefetched into L2 one 64-byte row per k. At the LSTM's
// sizes the weights of one step (W_ih and W_hh, 8 MB at H = 512) exceed the L3, so every step
// streams them from memory; prefetching the next block while this one is used from L1 took the
// (64 x 1024) @ (1024 x 2048) step GEMM from 73 to 76 GFLOP/s on 2 cores (_MM_HINT_T0: 72).
template <int MR>
inline void tile(int64_t kb, const float* a, int64_t lda, const float* b, float* c, int64_t ldc,
                 bool accumulate, int64_t nv, const float* next) {
  // Named accumulators, not an array: GCC spills an indexed __m256 array to the stack on every
  // iteration (measured: 19 vs 36 GFLOP/s on one core).
  __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
  __m256 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
  const float* a0 = a;
  const float* a1 = a + lda;
  const float* a2 = a + 2 * lda;
  const float* a3 = a + 3 * lda;
  const float* a4 = a + 4 * lda;
  const float* a5 = a + 5 * lda;
  for (int64_t k = 0; k < kb; ++k) {
    if (next != nullptr) {
      _mm_prefetch(reinterpret_cast<const char*>(next + k * kPanel), _MM_HINT_T1);
    }
    const __m256 b0 = _mm256_load_ps(b + k * kPanel);
    const __m256 b1 = _mm256_load_ps(b + k * kPanel + 8);
    __m256 av;
#define FUSED_RNN_TILE_ROW(i)                         \
  if constexpr (MR > i) {                             \
    av = _mm256_broadcast_ss(a##i + k);               \
    c##i##0 = _mm256_fmadd_ps(av, b0, c##i##0);       \
    c##i##1 = _mm256_fmadd_ps(av, b1, c##i##1);       \
  }
    FUSED_RNN_TILE_ROW(0)
    FUSED_RNN_TILE_ROW(1)
    FUSED_RNN_TILE_ROW(2)
    FUSED_RNN_TILE_ROW(3)
    FUSED_RNN_TILE_ROW(4)
    FUSED_RNN_TILE_ROW(5)
#undef FUSED_RNN_TILE_ROW
  }
  const __m256 acc[12] = {c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51};
  for (int i = 0; i < MR; ++i) {
    float* ci = c + i * ldc;
    __m256 v0 = acc[2 * i], v1 = acc[2 * i + 1];
    if (nv == kPanel) {
      if (accumulate) {
        v0 = _mm256_add_ps(v0, _mm256_loadu_ps(ci));
        v1 = _mm256_add_ps(v1, _mm256_loadu_ps(ci + 8));
      }
      _mm256_storeu_ps(ci, v0);
      _mm256_storeu_ps(ci + 8, v1);
    } else {  // the last panel of a group narrower than 16: store the valid lanes only
      alignas(32) float tmp[kPanel];
      _mm256_store_ps(tmp, v0);
      _mm256_store_ps(tmp + 8, v1);
      for (int64_t j = 0; j < nv; ++j) ci[j] = accumulate ? ci[j] + tmp[j] : tmp[j];
    }
  }
}

inline void tile_rows(int64_t mr, int64_t kb, const float* a, int64_t lda, const float* b,
                      float* c, int64_t ldc, bool accumulate, int64_t nv, const float* next) {
  switch (mr) {
    case 6: return tile<6>(kb, a, lda, b, c, ldc, accumulate, nv, next);
    case 5: return tile<5>(kb, a, lda, b, c, ldc, accumulate, nv, next);
    case 4: return tile<4>(kb, a, lda, b, c, ldc, accumulate, nv, next);
    case 3: return tile<3>(kb, a, lda, b, c, ldc, accumulate, nv, next);
    case 2: return tile<2>(kb, a, lda, b, c, ldc, accumulate, nv, next);
    default: return tile<1>(kb, a, lda, b, c, ldc, accumulate, nv, next);
  }
}

// For every group g: c[:, g * width + [0, ncols)] (+)= a (m x k, row stride lda) @ the group's
// panels, where `b` is the first of ceil(ncols / 16) * groups consecutive panels (unit-major, as
// packed) and `c` points at the first of these columns in group 0.
inline void gemm(const float* a, int64_t lda, int64_t m, int64_t k, const float* b, int64_t groups,
                 int64_t width, int64_t ncols, float* c, int64_t ldc, bool accumulate) {
  const int64_t nq = (ncols + kPanel - 1) / kPanel;
  const int64_t npanels = nq * groups;
  if (k == 0) {  // empty sum: C = 0 unless accumulating
    if (!accumulate) {
      for (int64_t i = 0; i < m; ++i) {
        for (int64_t g = 0; g < groups; ++g) {
          std::fill(c + i * ldc + g * width, c + i * ldc + g * width + ncols, 0.0f);
        }
      }
    }
    return;
  }
  for (int64_t mc = 0; mc < m; mc += kMC) {
    const int64_t me = std::min(m, mc + kMC);
    for (int64_t kc = 0; kc < k; kc += kKC) {
      const int64_t kb = std::min(kKC, k - kc);
      const bool acc = accumulate || kc > 0;
      for (int64_t p = 0; p < npanels; ++p) {
        const int64_t q = p / groups, g = p % groups;
        const float* bp = b + (p * k + kc) * kPanel;
        const int64_t nv = std::min(kPanel, ncols - q * kPanel);
        const float* next = p + 1 < npanels ? bp + k * kPanel : nullptr;  // same kc, next panel
        float* cp = c + g * width + q * kPanel;
        for (int64_t i = mc; i < me; i += kMR) {
          tile_rows(std::min(kMR, me - i), kb, a + i * lda + kc, lda, bp, cp + i * ldc, ldc, acc,
                    nv, i == mc ? next : nullptr);
        }
      }
    }
  }
}

}  // namespace panel
#endif  // FUSED_RNN_PANEL_KERNEL

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
#if FUSED_RNN_PANEL_KERNEL
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (panel_kernel_enabled()) pack(w);
    }
#endif
  }

  // For every group g: c[:, g * width + [n0, n1)] (+)= a (m x k, row stride lda) @
  // op(W)[:, g * width + [n0, n1)], with c the (m, ldc) row-major output (column 0 of group 0).
  // n0 must be a multiple of kPanel (chunk_range's boundaries are). Single-threaded: called
  // once per chunk of a parallel loop.
  void run(const scalar_t* a, int64_t lda, int64_t m, int64_t n0, int64_t n1, scalar_t* c,
           int64_t ldc, bool accumulate) const {
    const int64_t ncols = n1 - n0;
    if (m == 0 || ncols <= 0) return;
#if FUSED_RNN_PANEL_KERNEL
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (packed_.defined()) {
        const float* b = packed_.data_ptr<float>() + (n0 / kPanel) * groups_ * k_ * kPanel;
        panel::gemm(a, lda, m, k_, b, groups_, width_, ncols, c + n0, ldc, accumulate);
        return;
      }
    }
#endif
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

#if FUSED_RNN_PANEL_KERNEL
  void pack(const at::Tensor& w) {
    const int64_t panels = (width_ + kPanel - 1) / kPanel;  // per group
    packed_ = at::empty({groups_ * panels * k_ * kPanel}, w.options());
    float* dst = packed_.data_ptr<float>();
    const float* src = w.data_ptr<float>();
    const int64_t k = k_, width = width_, groups = groups_, n_total = groups_ * width_;
    const bool tr = transposed_;
    at::parallel_for(0, groups_ * panels, 1, [&](int64_t begin, int64_t end) {
      for (int64_t qg = begin; qg < end; ++qg) {
        const int64_t q = qg / groups, g = qg % groups;
        float* out = dst + qg * k * kPanel;
        const int64_t cols = std::min(kPanel, width - q * kPanel);  // valid columns of the panel
        const int64_t n = g * width + q * kPanel;                     // its first column in op(W)
        if (tr) {  // column n + j of op(W) is row n + j of w: read rows contiguously
          for (int64_t j = 0; j < kPanel; ++j) {
            for (int64_t kk = 0; kk < k; ++kk) {
              out[kk * kPanel + j] = j < cols ? src[(n + j) * k + kk] : 0.0f;
            }
          }
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
#endif

  const scalar_t* w_;
  bool transposed_;
  int64_t groups_, k_, width_;
  at::Tensor packed_;   // float32 panels, undefined on the BLAS path
};

}  // namespace fused_rnn::cpu
