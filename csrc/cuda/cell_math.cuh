// Gate math of one LSTM / GRU unit, forward and backward, shared by every CUDA kernel of
// fused_rnn and compiled unchanged by g++ in tests/test_cuda_compile.py (host emulation), so
// the math is tested on a machine without a GPU.
//
// Torch's gate orders: LSTM i, f, g, o; GRU r, z, n with n = tanh(xn + r * (W_hn h + b_hn)).
// "pre" values are pre-activations; the acc type A is float (fp16 / bf16 / fp32 inputs) or
// double (fp64 inputs). Nothing here touches memory: scalars in, scalars out.
#pragma once

#include <cmath>

#ifdef __CUDACC__
#define FR_HD __host__ __device__ __forceinline__
#else
#define FR_HD inline
#endif

namespace fused_rnn {
namespace cuda {

// Logistic sigmoid. exp(-x) overflows to inf for x < -88 (float) and gives exactly 0, which is
// the correctly rounded limit; NaN propagates. No fast-math: NaN/inf semantics are kept.
FR_HD float sigmoid_acc(float x) { return 1.0f / (1.0f + expf(-x)); }
FR_HD double sigmoid_acc(double x) { return 1.0 / (1.0 + exp(-x)); }
FR_HD float tanh_acc(float x) { return tanhf(x); }
FR_HD double tanh_acc(double x) { return tanh(x); }

// ---------------------------------------------------------------------------------------------
// LSTM
// ---------------------------------------------------------------------------------------------
template <class A>
struct LstmGates {
  A i, f, g, o;  // post-activation
};

// One unit forward: pre-activations (x W_ih^T + b_ih + h W_hh^T + b_hh) and c_prev in,
// gates, new cell state c and new hidden state h out.
template <class A>
FR_HD void lstm_unit_fwd(A pi, A pf, A pg, A po, A c_prev, LstmGates<A>& gt, A& c, A& h) {
  gt.i = sigmoid_acc(pi);
  gt.f = sigmoid_acc(pf);
  gt.g = tanh_acc(pg);
  gt.o = sigmoid_acc(po);
  c = gt.f * c_prev + gt.i * gt.g;
  h = gt.o * tanh_acc(c);
}

// One unit backward. dh: gradient w.r.t. this step's h (from the output and the next step);
// dc: gradient w.r.t. this step's c from the next step. Out: gradients of the four
// pre-activations and of c_prev. Uses only the saved activations and c (no recomputed exp).
template <class A>
FR_HD void lstm_unit_bwd(const LstmGates<A>& gt, A c, A c_prev, A dh, A dc, A& dpi, A& dpf,
                         A& dpg, A& dpo, A& dc_prev) {
  const A one = A(1);
  const A tc = tanh_acc(c);
  const A dct = dc + dh * gt.o * (one - tc * tc);
  dpo = dh * tc * gt.o * (one - gt.o);
  dpi = dct * gt.g * gt.i * (one - gt.i);
  dpf = dct * c_prev * gt.f * (one - gt.f);
  dpg = dct * gt.i * (one - gt.g * gt.g);
  dc_prev = dct * gt.f;
}

// ---------------------------------------------------------------------------------------------
// GRU
// ---------------------------------------------------------------------------------------------
template <class A>
struct GruGates {
  A r, z, n;  // post-activation
};

// xr, xz, xn: x W_ih^T + b_ih; hr, hz, hn: h_prev W_hh^T + b_hh (hn is what is saved as ghn).
template <class A>
FR_HD void gru_unit_fwd(A xr, A xz, A xn, A hr, A hz, A hn, A h_prev, GruGates<A>& gt, A& h) {
  gt.r = sigmoid_acc(xr + hr);
  gt.z = sigmoid_acc(xz + hz);
  gt.n = tanh_acc(xn + gt.r * hn);
  h = gt.n + gt.z * (h_prev - gt.n);  // == (1 - z) * n + z * h_prev
}

// dh: gradient w.r.t. this step's h. Out: gradients of the input-side pre-activations
// (dxr, dxz, dxn: rows of x W_ih^T + b_ih), of the hidden-side n pre-activation (dhn_pre:
// W_hn h + b_hn; the hidden-side r and z gradients equal dxr and dxz), and the direct part of
// the gradient of h_prev (dh * z; the part through W_hh is added by a GEMM).
template <class A>
FR_HD void gru_unit_bwd(const GruGates<A>& gt, A ghn, A h_prev, A dh, A& dxr, A& dxz, A& dxn,
                        A& dhn_pre, A& dh_prev_direct) {
  const A one = A(1);
  const A dn = dh * (one - gt.z);
  const A dz = dh * (h_prev - gt.n);
  dxn = dn * (one - gt.n * gt.n);
  dhn_pre = dxn * gt.r;
  dxr = dxn * ghn * gt.r * (one - gt.r);
  dxz = dz * gt.z * (one - gt.z);
  dh_prev_direct = dh * gt.z;
}

}  // namespace cuda
}  // namespace fused_rnn
