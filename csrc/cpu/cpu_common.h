// Helpers of the CPU kernels (csrc/cpu/recurrence.h and the cells built on it).
//
// Dimension legend: T time steps, B batch, H hidden size, G gates per cell.
//
// The kernels compute in `scalar_t` = float or double (the accumulation dtype); float16 /
// bfloat16 arguments are converted to float32 at the op boundary and the results back (see
// to_acc / from_acc), so the state and every sum are float32 for them.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include <algorithm>
#include <atomic>
#include <thread>
#include <type_traits>
#include <utility>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>  // _mm_pause (SSE2: the x86-64 baseline)
#endif

namespace fused_rnn::cpu {

using at::vec::Vectorized;

// The ISA the kernels were compiled for must be the one they run on: setup.py compiles them for
// AVX2+FMA when the build machine has it. Checked at every op entry, before any kernel runs, so
// a binary copied to an older CPU fails with a message instead of SIGILL.
inline void check_isa(const char* op) {
#if defined(CPU_CAPABILITY_AVX2) && defined(__x86_64__)
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  TORCH_CHECK(ok, op,
              ": fused_rnn._C was built for AVX2+FMA but this CPU lacks them; rebuild on this "
              "machine with FUSED_RNN_CPU_ISA=default pip install --no-build-isolation -e .");
#else
  (void)op;
#endif
}

// float32 copy of a float16 / bfloat16 tensor; other tensors are returned as they are.
inline at::Tensor to_acc(const at::Tensor& t) {
  const auto dt = t.scalar_type();
  return (dt == at::kHalf || dt == at::kBFloat16) ? t.to(at::kFloat) : t;
}

inline std::optional<at::Tensor> to_acc(const std::optional<at::Tensor>& t) {
  return t ? std::optional<at::Tensor>(to_acc(*t)) : std::nullopt;
}

// `t` converted to `dtype` (no copy when it already has it).
inline at::Tensor from_acc(const at::Tensor& t, at::ScalarType dtype) {
  return t.scalar_type() == dtype ? t : t.to(dtype);
}

// Per-row sequence lengths as a host pointer, or nullptr when every row runs all T steps.
inline const int64_t* lengths_ptr(const std::optional<at::Tensor>& lengths) {
  return lengths ? lengths->data_ptr<int64_t>() : nullptr;
}

// Whether row b has a real (unpadded) step t.
inline bool step_valid(const int64_t* len, int64_t b, int64_t t) {
  return len == nullptr || t < len[b];
}

// Rows the forward's input projection gathers per GEMM (recurrence.h): steps are batched until
// Tb * B reaches it, so small batches still fill the panel kernel's 6-row register tile.
constexpr int64_t kProjRows = 48;

// Output columns per packed weight panel (panel_gemm.h); chunk boundaries are multiples of it.
constexpr int64_t kPanel = 16;

// How many threads to split the units [0, n) over: one per thread, at most one per kPanel units;
// one when the work (`flops`) is too small to pay for a parallel region, or when already inside
// one.
inline int64_t chunk_count(int64_t n, int64_t flops) {
  if (flops < (int64_t{1} << 18) || at::in_parallel_region()) return 1;
  return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), (n + kPanel - 1) / kPanel));
}

// Units [u0, u1) of chunk c out of `chunks` contiguous chunks of [0, n), boundaries on
// multiples of kPanel (what PanelWeights::run needs); u0 == u1 for an empty chunk.
inline std::pair<int64_t, int64_t> chunk_range(int64_t n, int64_t c, int64_t chunks) {
  const int64_t panels = (n + kPanel - 1) / kPanel;
  const int64_t u0 = std::min(n, panels * c / chunks * kPanel);
  const int64_t u1 = c + 1 == chunks ? n : std::min(n, panels * (c + 1) / chunks * kPanel);
  return {u0, std::max(u0, u1)};
}

// Calls f(u0, u1) for every chunk of the units [0, n) (hidden units, or input features for dx)
// from one at::parallel_for: the single GEMMs outside the time loop (dx, the last dh) and the
// time loop's fallback in builds without OpenMP.
template <typename F>
inline void for_each_chunk(int64_t n, int64_t flops, const F& f) {
  const int64_t chunks = chunk_count(n, flops);
  if (chunks <= 1) {
    if (n > 0) f(int64_t{0}, n);
    return;
  }
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const auto [u0, u1] = chunk_range(n, c, chunks);
      if (u0 < u1) f(u0, u1);
    }
  });
}

// Waits until `arrived` reaches `target`: a spin with the CPU's pause hint, then yielding the
// core, so that a team sharing its cores with other processes still moves forward.
inline void wait_for(const std::atomic<int64_t>& arrived, int64_t target) {
  for (int spins = 0; arrived.load(std::memory_order_acquire) < target; ++spins) {
    if (spins < 4096) {
#if defined(__x86_64__) || defined(_M_X64)
      _mm_pause();
#endif
    } else {
      std::this_thread::yield();
    }
  }
}

// The time loop of the kernels: calls f(t, u0, u1) for every step t (0 .. T-1, or T-1 .. 0 when
// `reverse`) and every thread's chunk of the units [0, n), where all calls of step t finish
// before any call of the next step starts. One OpenMP parallel region spans the whole sequence:
// at::parallel_for per step would fork and join the team every step, which costs more than the
// step's work at small sizes (B = 16, H = 128: ~60 us per step). Chunks come from the team size
// OpenMP actually grants, so a smaller team cannot deadlock. `flops` is one step's work.
// A second phase (n2 > 0: the LSTM projection, whose GEMM needs every unit of the first phase's
// result) runs f2(t, v0, v1) over the units [0, n2) after a barrier in every step.
// ahead(t, u0, u1), when given, is step t's work that needs nothing from the other threads (the
// forward's input projection x_t W_ih^T into the thread's own columns): each thread runs it
// before it waits for the others to finish step t-1. The end of a step is a split barrier -- a
// thread arrives when its part is done, does its next ahead work, and only then waits -- so the
// wait of a thread that finished early (the cores' speeds differ by a few percent from step to
// step) and the barrier's own latency are covered by work instead of spinning.
template <typename F, typename F2, typename FA>
inline void for_each_step(int64_t T, bool reverse, int64_t n, int64_t flops, const F& f,
                          int64_t n2, const F2& f2, const FA& ahead) {
  auto step = [&](int64_t i) { return reverse ? T - 1 - i : i; };
  const int64_t want = chunk_count(std::max(n, n2), flops);
  if (want <= 1 || T == 0) {
    for (int64_t i = 0; i < T; ++i) {
      ahead(step(i), int64_t{0}, n);
      f(step(i), int64_t{0}, n);
      if (n2 > 0) f2(step(i), int64_t{0}, n2);
    }
    return;
  }
#ifdef _OPENMP
  std::atomic<int64_t> arrived{0};  // threads' finished steps, summed
#pragma omp parallel num_threads(static_cast<int>(want))
  {
    const int64_t c = omp_get_thread_num(), chunks = omp_get_num_threads();
    const auto [u0, u1] = chunk_range(n, c, chunks);
    const auto [v0, v1] = chunk_range(n2, c, chunks);
    for (int64_t i = 0; i < T; ++i) {
      if (u0 < u1) ahead(step(i), u0, u1);
      wait_for(arrived, chunks * i);  // every thread has finished step i - 1
      if (u0 < u1) f(step(i), u0, u1);
      if (n2 > 0) {
#pragma omp barrier
        if (v0 < v1) f2(step(i), v0, v1);
      }
      arrived.fetch_add(1, std::memory_order_release);
    }
  }  // the region's implicit barrier: every step is done
#else
  for (int64_t i = 0; i < T; ++i) {
    for_each_chunk(n, flops, [&](int64_t u0, int64_t u1) {
      ahead(step(i), u0, u1);
      f(step(i), u0, u1);
    });
    if (n2 > 0) for_each_chunk(n2, flops, [&](int64_t v0, int64_t v1) { f2(step(i), v0, v1); });
  }
#endif
}

// for_each_step without ahead work.
template <typename F, typename F2>
inline void for_each_step(int64_t T, bool reverse, int64_t n, int64_t flops, const F& f,
                          int64_t n2, const F2& f2) {
  for_each_step(T, reverse, n, flops, f, n2, f2, [](int64_t, int64_t, int64_t) {});
}

// Calls f(j, n) over the columns [u0, u1) in vector-width chunks: n == Vec::size() except for the
// tail, where loads (Vec::loadu(p, n)) zero-fill and stores (v.store(p, n)) write n lanes only.
template <typename scalar_t, typename F>
inline void for_each_vec(int64_t u0, int64_t u1, const F& f) {
  constexpr int64_t V = Vectorized<scalar_t>::size();
  int64_t j = u0;
  for (; j + V <= u1; j += V) f(j, V);
  if (j < u1) f(j, u1 - j);
}

#if defined(CPU_CAPABILITY_AVX2)
// The float32 transcendental functions of the AVX2 kernels, inline: ATen's Vectorized<float>::exp
// is an out-of-line call into Sleef whose range checks (overflow, underflow, NaN) cost more than
// the polynomial, and tanh built on it needed a second branch for small |x|. Here the argument
// is first clamped into the range where the result is finite and not yet saturated in float32,
// so the exponent 2^n needs no checks. NaN passes every clamp (min/max return the second operand
// when either is NaN) and every operation after it.

// 2^n for float n holding an integer in [-126, 128] (2^128: +inf).
inline __m256 pow2_avx2(__m256 n) {
  const __m256i e = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
  return _mm256_castsi256_ps(_mm256_slli_epi32(e, 23));
}

// Splits y = n ln2 + r with integer n (rounded as `mode` says) and r in about [-ln2/2, ln2/2]
// (nearest) or [0, ln2) (toward -inf); ln2 in two parts, so r is exact to a few ulps of r.
template <int mode>
inline __m256 reduce_ln2_avx2(__m256 y, __m256& n) {
  n = _mm256_round_ps(_mm256_mul_ps(y, _mm256_set1_ps(1.44269504088896341f)),
                      mode | _MM_FROUND_NO_EXC);
  const __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), y);
  return _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428606765330187e-06f), r);
}

// e^r - 1 for r in [-0.35, 0.7): r + r^2 (1/2 + r/6 + ... + r^7/9!), Taylor through r^9
// (truncation < 1e-8 relative on that range).
inline __m256 expm1_poly_avx2(__m256 r) {
  __m256 p = _mm256_set1_ps(1.0f / 362880);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 40320));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 5040));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  return _mm256_fmadd_ps(_mm256_mul_ps(r, r), p, r);
}

// tanh|x| = u / (u + 2), u = e^{2|x|} - 1, with the sign of x put back. u comes from r in [0, ln2)
// (n rounded down), so u = 2^n (e^r - 1) + (2^n - 1) adds two non-negative terms and never
// cancels; the rounding of u + 2 is recovered exactly (Fast2Sum: the sum's error is (2 - d) + u)
// and corrected for, which halves the error for small |x|. |x| is clamped at 9.1, past which
// tanh rounds to 1 in float32. Max error 1.93 ulp over every float32 in [-12, 12] against the
// float64 tanh (tests/test_ops.py bounds it at 2.5); tanh(+-0) = +-0, subnormals map to
// themselves, +-inf -> +-1, NaN -> NaN.
inline Vectorized<float> vtanh_avx2(const Vectorized<float>& xv) {
  const __m256 x = xv;
  const __m256 sign_bit = _mm256_set1_ps(-0.0f);
  const __m256 ax = _mm256_andnot_ps(sign_bit, x);
  const __m256 y = _mm256_min_ps(_mm256_set1_ps(18.2f), _mm256_add_ps(ax, ax));
  __m256 n;
  const __m256 r = reduce_ln2_avx2<_MM_FROUND_TO_NEG_INF>(y, n);
  const __m256 two_n = pow2_avx2(n);
  const __m256 u = _mm256_fmadd_ps(expm1_poly_avx2(r), two_n, _mm256_sub_ps(two_n, _mm256_set1_ps(1.0f)));
  const __m256 d = _mm256_add_ps(u, _mm256_set1_ps(2.0f));
  const __m256 d_err = _mm256_add_ps(_mm256_sub_ps(_mm256_set1_ps(2.0f), d), u);  // u + 2 - d
  const __m256 t = _mm256_div_ps(u, d);  // u / (d + d_err) = t (1 - d_err / d) to first order
  const __m256 corrected = _mm256_fnmadd_ps(t, _mm256_mul_ps(d_err, _mm256_rcp_ps(d)), t);
  return _mm256_or_ps(corrected, _mm256_and_ps(x, sign_bit));
}

// sigmoid(x) = 1 / (1 + e^{-x}) as ATen computes it, with e^{-x} = 2^n ((e^r - 1) + 1), r in
// [-ln2/2, ln2/2]. -x is clamped to [-87, 89]: below -87 sigmoid is 1 in float32 anyway, and
// from -x = 88.38 on n = 128, 2^n is +inf and the result 0 (torch's reaches 0 from 88.72 on and
// is under 4.5e-39 between). Max error 2.48 ulp against the float64 sigmoid over every float32
// with a normal result, at x near -16.6 where 1 + e^{-x} rounds (torch.sigmoid's own worst there
// is 2.38 ulp on this project's AVX2 CPU; tests/test_ops.py bounds ours at 3).
// +inf -> 1, -inf -> 0, NaN -> NaN.
inline Vectorized<float> vsigmoid_avx2(const Vectorized<float>& xv) {
  const __m256 neg_x = _mm256_sub_ps(_mm256_setzero_ps(), xv);
  const __m256 y = _mm256_max_ps(_mm256_set1_ps(-87.0f), _mm256_min_ps(_mm256_set1_ps(89.0f), neg_x));
  __m256 n;
  const __m256 r = reduce_ln2_avx2<_MM_FROUND_TO_NEAREST_INT>(y, n);
  // (e^r - 1) + 1 > 0, so 2^n = +inf gives +inf, not the NaN an fma with inf could.
  const __m256 e = _mm256_mul_ps(_mm256_add_ps(expm1_poly_avx2(r), _mm256_set1_ps(1.0f)), pow2_avx2(n));
  return _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_add_ps(_mm256_set1_ps(1.0f), e));
}
#endif

// Logistic sigmoid 1 / (1 + exp(-v)): the AVX2 kernels' own above for float; elsewhere with
// ATen's vectorised exp (NaN stays NaN, +-inf give 1 / 0).
template <typename scalar_t>
inline Vectorized<scalar_t> vsigmoid(const Vectorized<scalar_t>& v) {
#if defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<scalar_t, float>) {
    return vsigmoid_avx2(v);
  }
#endif
  const Vectorized<scalar_t> one(scalar_t(1));
  return one / (one + v.neg().exp());
}

// tanh. float on AVX2: vtanh_avx2 above. float elsewhere: Sleef's vectorised tanhf (ATen's
// Vectorized::tanh) costs ~113 cycles per AVX2 vector against ~34 for its expf, so for |x| >= 0.4
// tanh|x| = 1 - 2 / (exp(2|x|) + 1) with Sleef's expf (the subtraction cancels at most a factor
// 1.6), and for |x| < 0.4 the odd Taylor series through x^15 (truncation error < 0.1 ulp there):
// max error 1.85 ulp over a dense grid against float64; NaN -> NaN, +-inf -> +-1. double keeps
// Sleef's tanh.
template <typename scalar_t>
inline Vectorized<scalar_t> vtanh(const Vectorized<scalar_t>& x) {
  if constexpr (!std::is_same_v<scalar_t, float>) {
    return x.tanh();
  } else {
#if defined(CPU_CAPABILITY_AVX2)
    return vtanh_avx2(x);
#else
    using V = Vectorized<float>;
    const V one(1.0f);
    const V ax = x.abs();
    const V e = (ax + ax).exp();
    const V far = one - V(2.0f) / (e + one);                 // tanh|x|, NaN for NaN
    const V signed_far = V::blendv(far, far.neg(), x < V(0.0f));
    const V x2 = x * x;
    V p(-929569.0f / 638512875.0f);
    p = at::vec::fmadd(p, x2, V(21844.0f / 6081075.0f));
    p = at::vec::fmadd(p, x2, V(-1382.0f / 155925.0f));
    p = at::vec::fmadd(p, x2, V(62.0f / 2835.0f));
    p = at::vec::fmadd(p, x2, V(-17.0f / 315.0f));
    p = at::vec::fmadd(p, x2, V(2.0f / 15.0f));
    p = at::vec::fmadd(p, x2, V(-1.0f / 3.0f));
    const V near = at::vec::fmadd(p * x2, x, x);              // x + x^3 p(x^2)
    return V::blendv(signed_far, near, ax < V(0.4f));         // NaN compares false: far
#endif
  }
}

// Fills n elements at p with zeros.
template <typename scalar_t>
inline void zero_row(scalar_t* p, int64_t n) {
  std::fill(p, p + n, scalar_t(0));
}

}  // namespace fused_rnn::cpu
