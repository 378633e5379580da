// Element functions of the general path's fused pointwise kernels: what one thread does for one
// (b, j) of one time step. pointwise.cu wraps them in __global__ kernels; the g++ host emulation
// (csrc/cuda/emulation/) loops over (b, j) calling the very same functions, so the indexing,
// masking and saved-activation layout are tested without a GPU. Field meanings and shapes:
// launchers.h. T is the io type; A = Acc<T>::type.
#pragma once

#include <cstdint>

#include "cell_math.cuh"
#include "io_types.cuh"
#include "launchers.h"

namespace fused_rnn {
namespace cuda {

FR_HD bool step_valid(const int64_t* lengths, int b, int t) {
  return lengths == nullptr || static_cast<int64_t>(t) < lengths[b];
}

template <class T>
FR_HD void lstm_fwd_elem(const LstmFwdStep& p, int b, int j) {
  using A = typename Acc<T>::type;
  const int64_t H = p.H;
  const int64_t s = b * H + j;       // index into (B, H)
  const int64_t g = b * 4 * H + j;   // index of gate i into (B, 4H); + k*H for gate k
  A* gates = static_cast<A*>(p.gates_t);
  if (!step_valid(p.lengths, b, p.t)) {
    static_cast<T*>(p.y_t)[s] = from_acc<T>(A(0));
    if (gates != nullptr) {
      for (int k = 0; k < 4; ++k) gates[g + k * H] = A(0);
      static_cast<A*>(p.cs_t)[s] = A(0);
    }
    return;
  }
  const A* xp = static_cast<const A*>(p.xp_t);
  const A* pre = static_cast<const A*>(p.pre);
  A* hs = static_cast<A*>(p.h);
  A* cs = static_cast<A*>(p.c);
  LstmGates<A> gt;
  A c, h;
  lstm_unit_fwd(xp[g] + pre[g], xp[g + H] + pre[g + H], xp[g + 2 * H] + pre[g + 2 * H],
                xp[g + 3 * H] + pre[g + 3 * H], cs[s], gt, c, h);
  cs[s] = c;
  hs[s] = h;
  static_cast<T*>(p.y_t)[s] = from_acc<T>(h);
  if (gates != nullptr) {
    gates[g] = gt.i;
    gates[g + H] = gt.f;
    gates[g + 2 * H] = gt.g;
    gates[g + 3 * H] = gt.o;
    static_cast<A*>(p.cs_t)[s] = c;
  }
}

template <class T>
FR_HD void lstm_bwd_elem(const LstmBwdStep& p, int b, int j) {
  using A = typename Acc<T>::type;
  const int64_t H = p.H;
  const int64_t s = b * H + j;
  const int64_t g = b * 4 * H + j;
  A* dpre = static_cast<A*>(p.dpre_t);
  if (!step_valid(p.lengths, b, p.t)) {
    for (int k = 0; k < 4; ++k) dpre[g + k * H] = A(0);
    return;
  }
  const A* gates = static_cast<const A*>(p.gates_t);
  A* dh = static_cast<A*>(p.dh);
  A* dc = static_cast<A*>(p.dc);
  const LstmGates<A> gt{gates[g], gates[g + H], gates[g + 2 * H], gates[g + 3 * H]};
  const A dh_t = dh[s] + to_acc(static_cast<const T*>(p.dy_t)[s]);
  A dpi, dpf, dpg, dpo, dc_prev;
  lstm_unit_bwd(gt, static_cast<const A*>(p.cs_t)[s], static_cast<const A*>(p.c_prev)[s], dh_t,
                dc[s], dpi, dpf, dpg, dpo, dc_prev);
  dpre[g] = dpi;
  dpre[g + H] = dpf;
  dpre[g + 2 * H] = dpg;
  dpre[g + 3 * H] = dpo;
  dc[s] = dc_prev;
  dh[s] = A(0);  // h_{t-1} reaches the loss only through W_hh: the caller adds dpre_t W_hh
}

template <class T>
FR_HD void gru_fwd_elem(const GruFwdStep& p, int b, int j) {
  using A = typename Acc<T>::type;
  const int64_t H = p.H;
  const int64_t s = b * H + j;
  const int64_t g = b * 3 * H + j;
  A* gates = static_cast<A*>(p.gates_t);
  if (!step_valid(p.lengths, b, p.t)) {
    static_cast<T*>(p.y_t)[s] = from_acc<T>(A(0));
    if (gates != nullptr) {
      for (int k = 0; k < 3; ++k) gates[g + k * H] = A(0);
      static_cast<A*>(p.ghn_t)[s] = A(0);
    }
    return;
  }
  const A* xp = static_cast<const A*>(p.xp_t);
  const A* gh = static_cast<const A*>(p.gh);
  const A* bh = static_cast<const A*>(p.b_hh);
  A* hs = static_cast<A*>(p.h);
  GruGates<A> gt;
  A h;
  const A ghr = gh[g] + (bh != nullptr ? bh[j] : A(0));
  const A ghz = gh[g + H] + (bh != nullptr ? bh[j + H] : A(0));
  const A ghn = gh[g + 2 * H] + (bh != nullptr ? bh[j + 2 * H] : A(0));
  gru_unit_fwd(xp[g], xp[g + H], xp[g + 2 * H], ghr, ghz, ghn, hs[s], gt, h);
  hs[s] = h;
  static_cast<T*>(p.y_t)[s] = from_acc<T>(h);
  if (gates != nullptr) {
    gates[g] = gt.r;
    gates[g + H] = gt.z;
    gates[g + 2 * H] = gt.n;
    static_cast<A*>(p.ghn_t)[s] = ghn;
  }
}

template <class T>
FR_HD void gru_bwd_elem(const GruBwdStep& p, int b, int j) {
  using A = typename Acc<T>::type;
  const int64_t H = p.H;
  const int64_t s = b * H + j;
  const int64_t g = b * 3 * H + j;
  A* dxp = static_cast<A*>(p.dxp_t);
  A* dgh = static_cast<A*>(p.dgh_t);
  if (!step_valid(p.lengths, b, p.t)) {
    for (int k = 0; k < 3; ++k) {
      dxp[g + k * H] = A(0);
      dgh[g + k * H] = A(0);
    }
    return;
  }
  const A* gates = static_cast<const A*>(p.gates_t);
  A* dh = static_cast<A*>(p.dh);
  const GruGates<A> gt{gates[g], gates[g + H], gates[g + 2 * H]};
  const A dh_t = dh[s] + to_acc(static_cast<const T*>(p.dy_t)[s]);
  const A h_prev = to_acc(static_cast<const T*>(p.h_prev)[s]);
  A dxr, dxz, dxn, dhn_pre, dh_direct;
  gru_unit_bwd(gt, static_cast<const A*>(p.ghn_t)[s], h_prev, dh_t, dxr, dxz, dxn, dhn_pre,
               dh_direct);
  dxp[g] = dxr;
  dxp[g + H] = dxz;
  dxp[g + 2 * H] = dxn;
  dgh[g] = dxr;
  dgh[g + H] = dxz;
  dgh[g + 2 * H] = dhn_pre;
  dh[s] = dh_direct;
}

}  // namespace cuda
}  // namespace fused_rnn
