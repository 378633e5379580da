// Helpers shared by the CPU LSTM and GRU kernels (csrc/cpu/lstm.cpp, csrc/cpu/gru.cpp).
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

#include <algorithm>

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

// Calls f(b) for every batch row b in [0, B), split over at::parallel_for's threads. The grain
// keeps a chunk at >= ~16k elements of pointwise work so small problems stay on one thread.
template <typename F>
inline void for_each_row(int64_t B, int64_t row_elems, const F& f) {
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 14) / std::max<int64_t>(1, row_elems));
  at::parallel_for(0, B, grain, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) f(b);
  });
}

// Calls f(j, n) over the columns [0, H) in vector-width chunks: n == Vec::size() except for the
// tail, where loads (Vec::loadu(p, n)) zero-fill and stores (v.store(p, n)) write n lanes only.
template <typename scalar_t, typename F>
inline void for_each_vec(int64_t H, const F& f) {
  constexpr int64_t V = Vectorized<scalar_t>::size();
  int64_t j = 0;
  for (; j + V <= H; j += V) f(j, V);
  if (j < H) f(j, H - j);
}

// Logistic sigmoid 1 / (1 + exp(-v)) with ATen's vectorised exp: NaN stays NaN, +-inf give 1 / 0.
template <typename scalar_t>
inline Vectorized<scalar_t> vsigmoid(const Vectorized<scalar_t>& v) {
  const Vectorized<scalar_t> one(scalar_t(1));
  return one / (one + v.neg().exp());
}

// Fills n elements at p with zeros.
template <typename scalar_t>
inline void zero_row(scalar_t* p, int64_t n) {
  std::fill(p, p + n, scalar_t(0));
}

}  // namespace fused_rnn::cpu
