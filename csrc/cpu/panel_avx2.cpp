// The AVX2+FMA register kernel of the panel GEMM (layout and blocking: panel_gemm.h).
//
// This is the only code in the extension compiled for more than the baseline x86-64 ISA, and it
// is compiled for it per function (the FUSED_RNN_AVX2 target attribute), not per build: the
// library loads on any x86-64 CPU, and panel_gemm.h calls panel_gemm_avx2 only when isa.h found
// AVX2 and FMA on the CPU it runs on. The file includes no ATen header, so no inline function
// shared with the other translation units can be emitted here with AVX2 instructions.
#include "isa.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#include <cstdint>

#define FUSED_RNN_AVX2 __attribute__((target("avx2,fma")))

namespace fused_rnn::cpu {
namespace {

constexpr int64_t kPanel = 16;  // columns per panel: cpu_common.h's kPanel (two AVX2 vectors)
constexpr int64_t kMR = 6;      // rows of C per register tile
constexpr int64_t kKC = 256;    // k per cache block
constexpr int64_t kMC = 72;     // rows per cache block (a multiple of kMR)

// std::min would instantiate a shared (weak) template here: a local helper stays local.
constexpr int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

// One row of a tile's result, v0 (columns 0-7) and v1 (8-15), into c (+= when accumulating);
// only the first `nv` columns when the panel is the last, narrower one of its group.
FUSED_RNN_AVX2 inline void store_row(float* ci, __m256 v0, __m256 v1, bool accumulate,
                                     int64_t nv) {
  if (nv == kPanel) {
    if (accumulate) {
      v0 = _mm256_add_ps(v0, _mm256_loadu_ps(ci));
      v1 = _mm256_add_ps(v1, _mm256_loadu_ps(ci + 8));
    }
    _mm256_storeu_ps(ci, v0);
    _mm256_storeu_ps(ci + 8, v1);
  } else {
    alignas(32) float tmp[kPanel];
    _mm256_store_ps(tmp, v0);
    _mm256_store_ps(tmp + 8, v1);
    for (int64_t j = 0; j < nv; ++j) ci[j] = accumulate ? ci[j] + tmp[j] : tmp[j];
  }
}

// c (MR rows of ldc, `nv` <= 16 valid columns) (+)= a (MR rows of lda, kb) @ b (kb x 16 packed).
// `next` (or null): the next panel's block, prefetched into L2 one 64-byte row per k. At the LSTM's
// sizes the weights of one step (W_ih and W_hh, 8 MB at H = 512) exceed the L3, so every step
// streams them from memory; prefetching the next block while this one is used from L1 took the
// (64 x 1024) @ (1024 x 2048) step GEMM from 73 to 76 GFLOP/s on 2 cores (_MM_HINT_T0: 72).
template <int MR>
FUSED_RNN_AVX2 inline void tile(int64_t kb, const float* a, int64_t lda, const float* b, float* c, int64_t ldc,
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
  for (int i = 0; i < MR; ++i) store_row(c + i * ldc, acc[2 * i], acc[2 * i + 1], accumulate, nv);
}

// One or two rows of C: tile<1> / tile<2> would run 2 / 4 dependent FMA chains, which the FMA
// latency (4 cycles, 2 pipes: 8 chains needed) holds to a quarter / half of the peak -- the
// whole per-step GEMM at batch 1. Here k is split over 4 / 2 interleaved chains per output
// vector (8 in all), summed at the end.
template <int MR>
FUSED_RNN_AVX2 inline void tile_narrow(int64_t kb, const float* a, int64_t lda, const float* b,
                                       float* c, int64_t ldc, bool accumulate, int64_t nv,
                                       const float* next) {
  static_assert(MR == 1 || MR == 2, "tile_narrow is for one or two rows");
  constexpr int64_t KS = MR == 1 ? 4 : 2;  // k-split: chains per output vector
  __m256 x0 = _mm256_setzero_ps(), x1 = x0, x2 = x0, x3 = x0;  // row 0, columns 0-7
  __m256 y0 = x0, y1 = x0, y2 = x0, y3 = x0;                   // row 0 (MR 1) or 1, 8-15 / 0-7
  const float* a0 = a;
  const float* a1 = a + lda;
  int64_t k = 0;
  for (; k + KS <= kb; k += KS) {
    if (next != nullptr) {
      _mm_prefetch(reinterpret_cast<const char*>(next + k * kPanel), _MM_HINT_T1);
      if constexpr (KS == 4) {
        _mm_prefetch(reinterpret_cast<const char*>(next + (k + 2) * kPanel), _MM_HINT_T1);
      }
    }
    const float* bk = b + k * kPanel;
    if constexpr (MR == 1) {
      // x0..x3: columns 0-7 over k, k+1, k+2, k+3; y0..y3: columns 8-15.
      __m256 av = _mm256_broadcast_ss(a0 + k);
      x0 = _mm256_fmadd_ps(av, _mm256_load_ps(bk), x0);
      y0 = _mm256_fmadd_ps(av, _mm256_load_ps(bk + 8), y0);
      av = _mm256_broadcast_ss(a0 + k + 1);
      x1 = _mm256_fmadd_ps(av, _mm256_load_ps(bk + 16), x1);
      y1 = _mm256_fmadd_ps(av, _mm256_load_ps(bk + 24), y1);
      av = _mm256_broadcast_ss(a0 + k + 2);
      x2 = _mm256_fmadd_ps(av, _mm256_load_ps(bk + 32), x2);
      y2 = _mm256_fmadd_ps(av, _mm256_load_ps(bk + 40), y2);
      av = _mm256_broadcast_ss(a0 + k + 3);
      x3 = _mm256_fmadd_ps(av, _mm256_load_ps(bk + 48), x3);
      y3 = _mm256_fmadd_ps(av, _mm256_load_ps(bk + 56), y3);
    } else {
      // x0, x1: row 0 columns 0-7 / 8-15 over k; x2, x3: over k+1; y*: row 1 likewise.
      const __m256 b0 = _mm256_load_ps(bk), b1 = _mm256_load_ps(bk + 8);
      const __m256 b2 = _mm256_load_ps(bk + 16), b3 = _mm256_load_ps(bk + 24);
      __m256 av = _mm256_broadcast_ss(a0 + k);
      x0 = _mm256_fmadd_ps(av, b0, x0);
      x1 = _mm256_fmadd_ps(av, b1, x1);
      av = _mm256_broadcast_ss(a0 + k + 1);
      x2 = _mm256_fmadd_ps(av, b2, x2);
      x3 = _mm256_fmadd_ps(av, b3, x3);
      av = _mm256_broadcast_ss(a1 + k);
      y0 = _mm256_fmadd_ps(av, b0, y0);
      y1 = _mm256_fmadd_ps(av, b1, y1);
      av = _mm256_broadcast_ss(a1 + k + 1);
      y2 = _mm256_fmadd_ps(av, b2, y2);
      y3 = _mm256_fmadd_ps(av, b3, y3);
    }
  }
  for (; k < kb; ++k) {  // the k tail, into the first chain
    const __m256 b0 = _mm256_load_ps(b + k * kPanel), b1 = _mm256_load_ps(b + k * kPanel + 8);
    __m256 av = _mm256_broadcast_ss(a0 + k);
    x0 = _mm256_fmadd_ps(av, b0, x0);
    if constexpr (MR == 1) {
      y0 = _mm256_fmadd_ps(av, b1, y0);
    } else {
      x1 = _mm256_fmadd_ps(av, b1, x1);
      av = _mm256_broadcast_ss(a1 + k);
      y0 = _mm256_fmadd_ps(av, b0, y0);
      y1 = _mm256_fmadd_ps(av, b1, y1);
    }
  }
  __m256 r[4];
  if constexpr (MR == 1) {
    r[0] = _mm256_add_ps(_mm256_add_ps(x0, x1), _mm256_add_ps(x2, x3));
    r[1] = _mm256_add_ps(_mm256_add_ps(y0, y1), _mm256_add_ps(y2, y3));
  } else {
    r[0] = _mm256_add_ps(x0, x2);
    r[1] = _mm256_add_ps(x1, x3);
    r[2] = _mm256_add_ps(y0, y2);
    r[3] = _mm256_add_ps(y1, y3);
  }
  for (int i = 0; i < MR; ++i) store_row(c + i * ldc, r[2 * i], r[2 * i + 1], accumulate, nv);
}

FUSED_RNN_AVX2 inline void tile_rows(int64_t mr, int64_t kb, const float* a, int64_t lda, const float* b,
                      float* c, int64_t ldc, bool accumulate, int64_t nv, const float* next) {
  switch (mr) {
    case 6: return tile<6>(kb, a, lda, b, c, ldc, accumulate, nv, next);
    case 5: return tile<5>(kb, a, lda, b, c, ldc, accumulate, nv, next);
    case 4: return tile<4>(kb, a, lda, b, c, ldc, accumulate, nv, next);
    case 3: return tile<3>(kb, a, lda, b, c, ldc, accumulate, nv, next);
    case 2: return tile_narrow<2>(kb, a, lda, b, c, ldc, accumulate, nv, next);
    default: return tile_narrow<1>(kb, a, lda, b, c, ldc, accumulate, nv, next);
  }
}

// For every group g: c[:, g * width + [0, ncols)] (+)= a (m x k, row stride lda) @ the group's
// panels, where `b` is the first of ceil(ncols / 16) * groups consecutive panels (unit-major, as
// packed) and `c` points at the first of these columns in group 0.
FUSED_RNN_AVX2 void gemm(const float* a, int64_t lda, int64_t m, int64_t k, const float* b, int64_t groups,
                 int64_t width, int64_t ncols, float* c, int64_t ldc, bool accumulate) {
  const int64_t nq = (ncols + kPanel - 1) / kPanel;
  const int64_t npanels = nq * groups;
  if (k == 0) {  // empty sum: C = 0 unless accumulating
    if (!accumulate) {
      for (int64_t i = 0; i < m; ++i) {
        for (int64_t g = 0; g < groups; ++g) {
          for (int64_t j = 0; j < ncols; ++j) c[i * ldc + g * width + j] = 0.0f;
        }
      }
    }
    return;
  }
  for (int64_t mc = 0; mc < m; mc += kMC) {
    const int64_t me = min64(m, mc + kMC);
    for (int64_t kc = 0; kc < k; kc += kKC) {
      const int64_t kb = min64(kKC, k - kc);
      const bool acc = accumulate || kc > 0;
      for (int64_t p = 0; p < npanels; ++p) {
        const int64_t q = p / groups, g = p % groups;
        const float* bp = b + (p * k + kc) * kPanel;
        const int64_t nv = min64(kPanel, ncols - q * kPanel);
        const float* next = p + 1 < npanels ? bp + k * kPanel : nullptr;  // same kc, next panel
        float* cp = c + g * width + q * kPanel;
        for (int64_t i = mc; i < me; i += kMR) {
          tile_rows(min64(kMR, me - i), kb, a + i * lda + kc, lda, bp, cp + i * ldc, ldc, acc,
                    nv, i == mc ? next : nullptr);
        }
      }
    }
  }
}


// 8 x 8 transpose of the __m256 rows r0..r7 in place (row i of the result is column i).
FUSED_RNN_AVX2 inline void transpose8(__m256& r0, __m256& r1, __m256& r2, __m256& r3, __m256& r4,
                                      __m256& r5, __m256& r6, __m256& r7) {
  const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
  const __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
  const __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
  const __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
  const __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  r0 = _mm256_permute2f128_ps(s0, s4, 0x20);
  r1 = _mm256_permute2f128_ps(s1, s5, 0x20);
  r2 = _mm256_permute2f128_ps(s2, s6, 0x20);
  r3 = _mm256_permute2f128_ps(s3, s7, 0x20);
  r4 = _mm256_permute2f128_ps(s0, s4, 0x31);
  r5 = _mm256_permute2f128_ps(s1, s5, 0x31);
  r6 = _mm256_permute2f128_ps(s2, s6, 0x31);
  r7 = _mm256_permute2f128_ps(s3, s7, 0x31);
}

}  // namespace

FUSED_RNN_AVX2 void pack_panel_transposed_avx2(const float* src, int64_t k, int64_t rows,
                                               float* out) {
  // Eight rows (panel columns) at a time, eight k at a time: load 8 x 8, transpose, store each
  // k's 8 values as half of that k's 16-float panel row. Missing rows (past `rows`) are zeros.
  alignas(32) static const float kZeros[8] = {};
  for (int64_t half = 0; half < 2; ++half) {
    const float* r[8];
    for (int64_t j = 0; j < 8; ++j) {
      const int64_t row = half * 8 + j;
      r[j] = row < rows ? src + row * k : nullptr;
    }
    float* o = out + half * 8;
    int64_t kk = 0;
    for (; kk + 8 <= k; kk += 8) {
      __m256 v[8];
      for (int64_t j = 0; j < 8; ++j) {
        v[j] = r[j] ? _mm256_loadu_ps(r[j] + kk) : _mm256_load_ps(kZeros);
      }
      transpose8(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]);
      for (int64_t i = 0; i < 8; ++i) _mm256_store_ps(o + (kk + i) * kPanel, v[i]);
    }
    for (; kk < k; ++kk) {
      for (int64_t j = 0; j < 8; ++j) o[kk * kPanel + j] = r[j] ? r[j][kk] : 0.0f;
    }
  }
}

void panel_gemm_avx2(const float* a, int64_t lda, int64_t m, int64_t k, const float* b,
                     int64_t groups, int64_t width, int64_t ncols, float* c, int64_t ldc,
                     bool accumulate) {
  gemm(a, lda, m, k, b, groups, width, ncols, c, ldc, accumulate);
}

}  // namespace fused_rnn::cpu

#else  // not x86-64: isa.h never selects the AVX2 path

#include <cstdlib>

namespace fused_rnn::cpu {

void panel_gemm_avx2(const float*, int64_t, int64_t, int64_t, const float*, int64_t, int64_t,
                     int64_t, float*, int64_t, bool) {
  std::abort();  // unreachable: panel_kernel_enabled() is false off x86-64
}

void pack_panel_transposed_avx2(const float*, int64_t, int64_t, float*) {
  std::abort();  // unreachable: panel_kernel_enabled() is false off x86-64
}

}  // namespace fused_rnn::cpu

#endif
