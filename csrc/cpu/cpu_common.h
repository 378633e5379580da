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
#include <type_traits>
#include <utility>

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

// The time loop of the kernels: calls f(t, u0, u1) for every step t (0 .. T-1, or T-1 .. 0 when
// `reverse`) and every thread's chunk of the units [0, n), where all calls of step t finish
// before any call of the next step starts. One OpenMP parallel region spans the whole sequence,
// with a barrier between steps: at::parallel_for per step would fork and join the team every
// step, which costs more than the step's work at small sizes (B = 16, H = 128: ~60 us per step).
// Chunks come from the team size OpenMP actually grants, so a smaller team cannot deadlock the
// barrier. `flops` is one step's work.
// A second phase (n2 > 0: the LSTM projection, whose GEMM needs every unit of the first phase's
// result) runs f2(t, v0, v1) over the units [0, n2) after another barrier in every step.
template <typename F, typename F2>
inline void for_each_step(int64_t T, bool reverse, int64_t n, int64_t flops, const F& f,
                          int64_t n2, const F2& f2) {
  auto step = [&](int64_t i) { return reverse ? T - 1 - i : i; };
  const int64_t want = chunk_count(std::max(n, n2), flops);
  if (want <= 1 || T == 0) {
    for (int64_t i = 0; i < T; ++i) {
      f(step(i), int64_t{0}, n);
      if (n2 > 0) f2(step(i), int64_t{0}, n2);
    }
    return;
  }
#ifdef _OPENMP
#pragma omp parallel num_threads(static_cast<int>(want))
  {
    const int64_t c = omp_get_thread_num(), chunks = omp_get_num_threads();
    const auto [u0, u1] = chunk_range(n, c, chunks);
    const auto [v0, v1] = chunk_range(n2, c, chunks);
    for (int64_t i = 0; i < T; ++i) {
      if (u0 < u1) f(step(i), u0, u1);
#pragma omp barrier
      if (n2 > 0) {
        if (v0 < v1) f2(step(i), v0, v1);
#pragma omp barrier
      }
    }
  }
#else
  for (int64_t i = 0; i < T; ++i) {
    for_each_chunk(n, flops, [&](int64_t u0, int64_t u1) { f(step(i), u0, u1); });
    if (n2 > 0) for_each_chunk(n2, flops, [&](int64_t v0, int64_t v1) { f2(step(i), v0, v1); });
  }
#endif
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

// Logistic sigmoid 1 / (1 + exp(-v)) with ATen's vectorised exp: NaN stays NaN, +-inf give 1 / 0.
template <typename scalar_t>
inline Vectorized<scalar_t> vsigmoid(const Vectorized<scalar_t>& v) {
  const Vectorized<scalar_t> one(scalar_t(1));
  return one / (one + v.neg().exp());
}

// tanh. float: Sleef's vectorised tanhf (ATen's Vectorized::tanh) costs ~113 cycles per AVX2
// vector on the project's CPU against ~34 for its expf, and the LSTM calls tanh twice per element
// (measured: Sleef tanh was 9% of a 2-thread LSTM inference at the IMDB shape). So for
// |x| >= 0.4: tanh|x| = 1 - 2 / (exp(2|x|) + 1) with Sleef's expf (the subtraction cancels at
// most a factor 1.6), and for |x| < 0.4 the odd Taylor series through x^15 (truncation error
// < 0.1 ulp there). Max error 1.85 ulp measured over a dense grid against float64
// (tests/test_ops.py bounds it at 2.5); NaN -> NaN, +-inf -> +-1. double keeps Sleef's tanh.
template <typename scalar_t>
inline Vectorized<scalar_t> vtanh(const Vectorized<scalar_t>& x) {
  if constexpr (!std::is_same_v<scalar_t, float>) {
    return x.tanh();
  } else {
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
  }
}

// Fills n elements at p with zeros.
template <typename scalar_t>
inline void zero_row(scalar_t* p, int64_t n) {
  std::fill(p, p + n, scalar_t(0));
}

}  // namespace fused_rnn::cpu
