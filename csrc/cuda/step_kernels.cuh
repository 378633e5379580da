// Element functions of the general path's fused pointwise kernels: what one thread does for one
// (b, j) of one time step, written once over the cell traits of cell_math.cuh. pointwise.cu wraps
// them in __global__ kernels; the g++ host emulation (csrc/cuda/emulation/) loops over (b, j)
// calling the very same functions, so the indexing, masking and saved-activation layout are
// tested without a GPU. Field meanings and shapes: launchers.h. C is a cell trait, T the io type,
// A = Acc<T>::type.
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

template <class C, class T>
FR_HD void fwd_elem(const FwdStep& p, int b, int j) {
  using A = typename Acc<T>::type;
  constexpr int G = C::G;
  const int64_t H = p.H;
  const int64_t s = b * H + j;      // index into (B, H)
  const int64_t g = b * G * H + j;  // index of gate 0 into (B, G*H); + k*H for gate k
  A* gates = static_cast<A*>(p.gates_t);
  T* y = static_cast<T*>(p.y_t);
  if (!step_valid(p.lengths, b, p.t)) {
    if (y != nullptr) y[s] = from_acc<T>(A(0));
    if (gates != nullptr) {
      for (int k = 0; k < G; ++k) gates[g + k * H] = A(0);
      static_cast<A*>(p.aux_t)[s] = A(0);
    }
    return;
  }
  const A* xp = static_cast<const A*>(p.xp_t);
  const A* pre = static_cast<const A*>(p.pre);
  const A* bh = static_cast<const A*>(p.b_hh);
  A* hs = static_cast<A*>(p.h);
  A x[G], hw[G], act[G], aux;
  for (int k = 0; k < G; ++k) {
    x[k] = xp[g + k * H];
    hw[k] = bh != nullptr ? pre[g + k * H] + bh[j + k * H] : pre[g + k * H];
  }
  A c = C::kCellState ? static_cast<A*>(p.c)[s] : A(0);
  const A h = C::fwd(x, hw, hs[s], c, act, aux);
  hs[s] = h;
  if (C::kCellState) static_cast<A*>(p.c)[s] = c;
  if (y != nullptr) y[s] = from_acc<T>(h);
  if (gates != nullptr) {
    for (int k = 0; k < G; ++k) gates[g + k * H] = act[k];
    static_cast<A*>(p.aux_t)[s] = aux;
  }
}

template <class C, class T>
FR_HD void bwd_elem(const BwdStep& p, int b, int j) {
  using A = typename Acc<T>::type;
  constexpr int G = C::G;
  const int64_t H = p.H;
  const int64_t s = b * H + j;
  const int64_t g = b * G * H + j;
  A* dxp = static_cast<A*>(p.dxp_t);
  A* dgh = static_cast<A*>(p.dgh_t);
  if (!step_valid(p.lengths, b, p.t)) {
    for (int k = 0; k < G; ++k) dxp[g + k * H] = A(0);
    if (dgh != nullptr) {
      for (int k = 0; k < G; ++k) dgh[g + k * H] = A(0);
    }
    return;
  }
  A act[G], dx[G], dhw[G];
  A aux = A(0), c_prev = A(0), h_prev = A(0), dc = A(0);
  if (C::kSavesGates) {
    const A* gates = static_cast<const A*>(p.gates_t);
    for (int k = 0; k < G; ++k) act[k] = gates[g + k * H];
    aux = static_cast<const A*>(p.aux_t)[s];
  } else {
    act[0] = to_acc(static_cast<const T*>(p.y_t)[s]);  // RNN: h_t
  }
  if (C::kCellState) {
    c_prev = static_cast<const A*>(p.c_prev)[s];
    dc = static_cast<A*>(p.dc)[s];
  }
  if (C::kBiasApart) h_prev = to_acc(static_cast<const T*>(p.h_prev)[s]);
  A* dh = static_cast<A*>(p.dh);
  const A dh_t = p.dy_t != nullptr ? dh[s] + to_acc(static_cast<const T*>(p.dy_t)[s]) : dh[s];
  dh[s] = C::bwd(act, aux, c_prev, h_prev, dh_t, dc, dx, dhw);
  if (C::kCellState) static_cast<A*>(p.dc)[s] = dc;
  for (int k = 0; k < G; ++k) dxp[g + k * H] = dx[k];
  if (dgh != nullptr) {
    for (int k = 0; k < G; ++k) dgh[g + k * H] = dhw[k];
  }
}

// LSTM proj: h_t = hp where valid, frozen elsewhere; y[t] masked.
template <class T>
FR_HD void proj_fwd_elem(const ProjFwdStep& p, int b, int k) {
  using A = typename Acc<T>::type;
  const int64_t s = static_cast<int64_t>(b) * p.P + k;
  T* y = static_cast<T*>(p.y_t);
  if (!step_valid(p.lengths, b, p.t)) {
    y[s] = from_acc<T>(A(0));
    return;
  }
  const A h = static_cast<const A*>(p.hp)[s];
  static_cast<A*>(p.h)[s] = h;
  y[s] = from_acc<T>(h);
}

// LSTM proj: dhp = dh + dy[t] where valid (then dh = 0: h_{t-1} is reached through W_hh only),
// 0 and dh untouched where invalid.
template <class T>
FR_HD void proj_bwd_elem(const ProjBwdStep& p, int b, int k) {
  using A = typename Acc<T>::type;
  const int64_t s = static_cast<int64_t>(b) * p.P + k;
  A* dhp = static_cast<A*>(p.dhp_t);
  if (!step_valid(p.lengths, b, p.t)) {
    dhp[s] = A(0);
    return;
  }
  A* dh = static_cast<A*>(p.dh);
  dhp[s] = dh[s] + to_acc(static_cast<const T*>(p.dy_t)[s]);
  dh[s] = A(0);
}

}  // namespace cuda
}  // namespace fused_rnn
