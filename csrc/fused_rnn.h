// fused_rnn compiled ops: declarations shared by every device implementation.
//
// Dimension legend (every op is one layer, one direction, time-major):
//   T time steps, B batch, I input features, H hidden size, P size of h (the LSTM's proj_size when
//   it projects, else H), G gates per cell (4 for LSTM in order i, f, g, o; 3 for GRU in order
//   r, z, n -- torch's order; 1 for the Elman RNN).
//
// The op schemas are declared once in csrc/ops.cpp (TORCH_LIBRARY(fused_rnn, m)); each device
// registers kernels with TORCH_LIBRARY_IMPL(fused_rnn, CPU|CUDA, m). The argument checks below are
// defined in ops.cpp and run at the op boundary of every device, so bad input gives the same
// message on CPU and CUDA.
//
// Layout contract (checked by the functions below):
//   x (T, B, I), h0 (B, P), c0 (B, H), w_ih (G*H, I), w_hh (G*H, P), b_ih / b_hh (G*H,) or both
//   absent, w_hr (P, H) or absent (LSTM projection), lengths (B,) int64 on x's device or absent. All floating tensors share x's dtype and device and
//   are contiguous. Saved activations (gates (T, B, G*H), cs / ghn (T, B, H)) are in the
//   accumulation dtype: float32 for float16 / bfloat16 inputs, else x's dtype.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

namespace fused_rnn {

// Sizes of one forward call, as read off its checked arguments.
struct Dims {
  int64_t T, B, I, H, P;
};

// float32 for float16 / bfloat16, else the dtype itself.
at::ScalarType acc_dtype(at::ScalarType dtype);

// Checks the arguments shared by every forward and backward op and returns the sizes.
//   op: the op's name for messages ("fused_rnn::lstm_fwd"); gates: G;
//   c0: the LSTM's initial cell state (nullptr for GRU).
//   w_hr: the LSTM's projection (P, H), or absent (then P = H).
// Lengths values (1 <= lengths[b] <= T) are not read here: that needs the data on the host, see
// check_lengths_values.
Dims check_inputs(const char* op, int64_t gates, const at::Tensor& x, const at::Tensor& h0,
                  const at::Tensor* c0, const at::Tensor& w_ih, const at::Tensor& w_hh,
                  const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
                  const std::optional<at::Tensor>& w_hr, const std::optional<at::Tensor>& lengths);

// The same without a projection (P = H).
Dims check_inputs(const char* op, int64_t gates, const at::Tensor& x, const at::Tensor& h0,
                  const at::Tensor* c0, const at::Tensor& w_ih, const at::Tensor& w_hh,
                  const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
                  const std::optional<at::Tensor>& lengths);

// Checks that `t` is a contiguous tensor of `shape`, `dtype` and `x`'s device.
void check_tensor(const char* op, const char* name, const at::Tensor& t,
                  at::IntArrayRef shape, at::ScalarType dtype, const at::Tensor& x);

// Checks 1 <= lengths[b] <= T for a host (CPU) lengths tensor of B int64 values.
void check_lengths_values(const char* op, const at::Tensor& lengths, int64_t T);

}  // namespace fused_rnn
