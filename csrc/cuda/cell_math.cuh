// The cells of the CUDA backend: gate math of one LSTM / GRU / Elman RNN unit, forward and
// backward, and the cell traits (LstmCell, GruCell, RnnCell<kRelu>) over which every kernel and
// launcher is written once. Shared by every CUDA kernel of fused_rnn and compiled unchanged by
// g++ in tests/test_cuda_compile.py (host emulation), so the math is tested without a GPU.
//
// Torch's gate orders: LSTM i, f, g, o; GRU r, z, n with n = tanh(xn + r * (W_hn h + b_hn));
// RNN h' = act(W_ih x + b_ih + W_hh h + b_hh), act = tanh or relu.
// "pre" values are pre-activations; the acc type A is float (fp16 / bf16 / fp32 inputs) or
// double (fp64 inputs). Nothing here touches memory: scalars in, scalars out.
#pragma once

#include <cmath>

#include "launchers.h"

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

// ---------------------------------------------------------------------------------------------
// Elman RNN
// ---------------------------------------------------------------------------------------------
// act(pre). relu keeps NaN (a NaN pre-activation gives NaN, as torch.relu does).
template <bool kRelu, class A>
FR_HD A rnn_act(A pre) {
  if (kRelu) return pre < A(0) ? A(0) : pre;
  return tanh_acc(pre);
}

// act'(pre) from h = act(pre): tanh' = 1 - h^2; relu' = 1 where h > 0 (torch's: 0 at pre = 0).
template <bool kRelu, class A>
FR_HD A rnn_act_grad(A h) {
  if (kRelu) return h > A(0) ? A(1) : A(0);
  return A(1) - h * h;
}

// ---------------------------------------------------------------------------------------------
// Cell traits. Every kernel sees one unit of a cell through this interface:
//   G             gates (rows of W_ih / W_hh per hidden unit)
//   kCellState    true when the cell carries a second state c next to h (LSTM)
//   kSavesGates   true when the forward saves the G activations and one aux value per unit for
//                 the backward (LSTM: c_t; GRU: W_hn h + b_hn); false when h_t (= y) is all the
//                 backward needs (RNN)
//   kBiasApart    true when b_hh cannot be folded into the input projection (GRU: b_hn sits
//                 inside r * (...)): the hidden-side pre-activation gradients differ from the
//                 input-side ones, and the backward needs h_{t-1}
//   fwd(x, hw, h_prev, c, act, aux) -> h_t
//       x[G]: input-side pre-activations (x W_ih^T + b_ih, + b_hh unless kBiasApart);
//       hw[G]: hidden-side (h_{t-1} W_hh^T, + b_hh if kBiasApart); c in/out (kCellState);
//       act[G], aux out: what kSavesGates saves
//   bwd(act, aux, c_prev, h_prev, dh, dc, dx, dhw) -> the part of dL/dh_{t-1} that does not go
//       through W_hh; dh: dL/dh_t; dc in/out: dL/dc_t -> dL/dc_{t-1} (kCellState);
//       dx[G], dhw[G] out: gradients of x and hw (equal unless kBiasApart).
//       RNN: act[0] is h_t (read from y), aux / c_prev / h_prev unused.
// ---------------------------------------------------------------------------------------------
struct LstmCell {
  static constexpr int G = 4;
  static constexpr bool kCellState = true, kSavesGates = true, kBiasApart = false;
  template <class A>
  FR_HD static A fwd(const A (&x)[G], const A (&hw)[G], A /*h_prev*/, A& c, A (&act)[G],
                     A& aux) {
    LstmGates<A> gt;
    A h;
    lstm_unit_fwd(x[0] + hw[0], x[1] + hw[1], x[2] + hw[2], x[3] + hw[3], c, gt, c, h);
    act[0] = gt.i, act[1] = gt.f, act[2] = gt.g, act[3] = gt.o;
    aux = c;
    return h;
  }
  template <class A>
  FR_HD static A bwd(const A (&act)[G], A aux, A c_prev, A /*h_prev*/, A dh, A& dc, A (&dx)[G],
                     A (&dhw)[G]) {
    const LstmGates<A> gt{act[0], act[1], act[2], act[3]};
    lstm_unit_bwd(gt, aux, c_prev, dh, dc, dx[0], dx[1], dx[2], dx[3], dc);
    for (int k = 0; k < G; ++k) dhw[k] = dx[k];
    return A(0);  // h_{t-1} reaches the loss only through W_hh
  }
};

struct GruCell {
  static constexpr int G = 3;
  static constexpr bool kCellState = false, kSavesGates = true, kBiasApart = true;
  template <class A>
  FR_HD static A fwd(const A (&x)[G], const A (&hw)[G], A h_prev, A& /*c*/, A (&act)[G],
                     A& aux) {
    GruGates<A> gt;
    A h;
    gru_unit_fwd(x[0], x[1], x[2], hw[0], hw[1], hw[2], h_prev, gt, h);
    act[0] = gt.r, act[1] = gt.z, act[2] = gt.n;
    aux = hw[2];
    return h;
  }
  template <class A>
  FR_HD static A bwd(const A (&act)[G], A aux, A /*c_prev*/, A h_prev, A dh, A& /*dc*/,
                     A (&dx)[G], A (&dhw)[G]) {
    const GruGates<A> gt{act[0], act[1], act[2]};
    A direct;
    gru_unit_bwd(gt, aux, h_prev, dh, dx[0], dx[1], dx[2], dhw[2], direct);
    dhw[0] = dx[0], dhw[1] = dx[1];
    return direct;
  }
};

template <bool kRelu>
struct RnnCell {
  static constexpr int G = 1;
  static constexpr bool kCellState = false, kSavesGates = false, kBiasApart = false;
  template <class A>
  FR_HD static A fwd(const A (&x)[G], const A (&hw)[G], A /*h_prev*/, A& /*c*/, A (&act)[G],
                     A& aux) {
    act[0] = rnn_act<kRelu>(x[0] + hw[0]);
    aux = A(0);
    return act[0];
  }
  template <class A>
  FR_HD static A bwd(const A (&act)[G], A /*aux*/, A /*c_prev*/, A /*h_prev*/, A dh, A& /*dc*/,
                     A (&dx)[G], A (&dhw)[G]) {
    dx[0] = dhw[0] = dh * rnn_act_grad<kRelu>(act[0]);
    return A(0);
  }
};

// Calls f(C{}) with the trait of `cell`: the one place a Cell value becomes a type.
template <class F>
auto visit_cell(Cell cell, F&& f) {
  switch (cell) {
    case Cell::kLstm:
      return f(LstmCell{});
    case Cell::kGru:
      return f(GruCell{});
    case Cell::kRnnTanh:
      return f(RnnCell<false>{});
    default:
      return f(RnnCell<true>{});
  }
}

}  // namespace cuda
}  // namespace fused_rnn
