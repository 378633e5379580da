// The layer recurrence of every CPU cell, written once: forward and backward time loops,
// lengths, threading, GEMMs, buffers, the LSTM projection, and the op boundary (checks, dtype
// conversion, dispatch). A cell (lstm.cpp, gru.cpp, rnn.cpp) supplies only small traits: its
// gate count, its states, and its pointwise math forward and backward (see "Cell traits" below).
//
// Dimension legend: T time steps, B batch, I input features, H hidden size, G gates per cell,
// P the size of h (the LSTM's proj_size when it projects, else H); S the cell's leading gate
// blocks whose input- and hidden-side pre-activations are summed (all G but the GRU's n block,
// whose hidden side sits inside r * (W_hn h + b_hn)); GS = G - S.
//
// Threads own hidden units: for_each_step gives each thread a contiguous range [u0, u1) of units,
// and with it the columns u0..u1 of every gate block, for the whole sequence (one parallel region,
// a barrier after every step). The weights are packed once per call (PanelWeights, panel_gemm.h).
// Forward, per step and thread: pre = x_t W_ih^T (all G blocks) + h_{t-1} W_hh^T (first S blocks)
// and sep = h_{t-1} W_hh^T (last GS blocks) for its columns into small (B, G*H) / (B, GS*H)
// buffers that stay in cache, then the cell's fused, vectorised pointwise update of its units for
// every batch row, which adds the biases and saves what backward needs. The input projection runs
// inside the loop, for Tb = ceil(kProjRows / B) steps at a time (one step when B >= 48), rather
// than as one (T*B, I) x (I, G*H) GEMM before it: the register kernel is as fast at 64 rows as at
// 6400, and a (T, B, G*H) pre-activation buffer (67 MB at the LSTM's IMDB shape) would leave the
// cache between the two passes and be page-faulted afresh on every call (measured: 262 -> 238 ms,
// 2 threads); at small B, gathering Tb steps fills the 6-row register tile (B = 1, H = 128: 9.6
// -> 4 us per LSTM step). h_{t-1} is read whole by every thread while h_t is
// written, so h alternates between two buffers; a cell state (LSTM c) is touched only by its
// owner. With a projection (LSTM proj_size) the cell's output o * tanh(c) goes to a (B, H) buffer
// and a second phase of the step, after a barrier, computes h_t = r W_hr^T for each thread's
// share of the P outputs. Nothing is allocated inside the time loop.
// Backward, per reverse step and thread: dh += dG[t+1] W_hh (its units of h), then the cell's
// gradients dG[t] of its units' pre-activations (with a projection, first dh_t for its share of P,
// a barrier, then dout = dh_t W_hr for its units). After the loop dx = dG W_ih (the same chunked
// GEMM over input features), dW_ih, dW_hh, dW_hr (BLAS GEMMs over all steps) and the bias sums.
// Per-sequence lengths: a row whose step t is padding (t >= lengths[b]) writes y = 0, keeps its
// state, and gets zero gradients, so its state gradient passes through unchanged.
//
// Cell traits (a struct with static members; `Row` is FwdRow / BwdRow below, `Vec` Vectorized):
//   G, S                    gate blocks, shared blocks (see the legend);
//   kCellState              a second state c (B, H) besides h (the LSTM's);
//   kSavesGates             forward saves the post-activation gates (T, B, G*H) for backward;
//   kProj                   supports a projection h = W_hr out (w_hr (P, H));
//   kExtraName              name of the second saved tensor (T, B, H) in messages: the cell
//                           states (LSTM "cs") or the separate blocks' pre-activation (GRU "ghn");
//                           nullptr when there is none;
//   fwd<Vec>(row, j, n)     the step's update of units j .. j+n-1 of one batch row; returns the
//                           output (h, or o * tanh(c) before a projection);
//   bwd<Vec>(row, j, n, dout)  given dout = dL/d(output), writes dG (and dsep, dc) of those units
//                           and returns the gradient reaching h_{t-1} directly (not through W_hh).
#pragma once

#include <torch/library.h>

#include <optional>
#include <tuple>

#include "../fused_rnn.h"
#include "cpu_common.h"
#include "panel_gemm.h"

namespace fused_rnn::cpu {

using at::Tensor;

// One batch row of one forward step, as the cell's fwd sees it. Column arguments j, n select the
// units j .. j+n-1; k is a gate block. Pointers are null where the cell or call has no such data.
template <typename scalar_t>
struct FwdRow {
  using Vec = Vectorized<scalar_t>;
  int64_t H;
  const scalar_t* pre_;       // (G*H) input side (+ hidden side for the first S blocks)
  const scalar_t* bias_;      // (G*H) b_ih (+ b_hh for the first S blocks)
  const scalar_t* sep_;       // (GS*H) hidden side of the last GS blocks
  const scalar_t* bias_sep_;  // (GS*H) b_hh of the last GS blocks
  const scalar_t* h_prev_;    // (H) h_{t-1} (no projection: P == H)
  const scalar_t* c_prev_;    // (H) c_{t-1}
  scalar_t* c_;               // (H) c_t
  scalar_t* gates_;           // (G*H) saved gates of this step, or null
  scalar_t* saved_sep_;       // (GS*H) saved sep + bias of this step, or null

  Vec pre(int64_t k, int64_t j, int64_t n) const {  // pre-activation of block k with its bias
    const Vec v = Vec::loadu(pre_ + k * H + j, n);
    return bias_ ? v + Vec::loadu(bias_ + k * H + j, n) : v;
  }
  Vec sep(int64_t k, int64_t j, int64_t n) const {  // hidden side of separate block k, with bias
    const Vec v = Vec::loadu(sep_ + k * H + j, n);
    return bias_sep_ ? v + Vec::loadu(bias_sep_ + k * H + j, n) : v;
  }
  Vec h_prev(int64_t j, int64_t n) const { return Vec::loadu(h_prev_ + j, n); }
  Vec c_prev(int64_t j, int64_t n) const { return Vec::loadu(c_prev_ + j, n); }
  void set_c(int64_t j, int64_t n, const Vec& v) const { v.store(c_ + j, n); }
  void save_gate(int64_t k, int64_t j, int64_t n, const Vec& v) const {
    if (gates_) v.store(gates_ + k * H + j, n);
  }
  void save_sep(int64_t k, int64_t j, int64_t n, const Vec& v) const {
    if (saved_sep_) v.store(saved_sep_ + k * H + j, n);
  }
};

// One batch row of one backward step, as the cell's bwd sees it (conventions as FwdRow).
template <typename scalar_t>
struct BwdRow {
  using Vec = Vectorized<scalar_t>;
  int64_t H;
  const scalar_t* gates_;      // (G*H) saved gates
  const scalar_t* saved_sep_;  // (GS*H) saved hidden side (+ bias) of the separate blocks
  const scalar_t* h_;          // (H) h_t (= y[t], no projection)
  const scalar_t* h_prev_;     // (H) h_{t-1} (no projection)
  const scalar_t* c_;          // (H) c_t
  const scalar_t* c_prev_;     // (H) c_{t-1}
  scalar_t* dc_;               // (H) in: dL/dc_t from later steps; out: dL/dc_{t-1}
  scalar_t* dg_;               // (G*H) out: dL/d(pre-activation), input side (= hidden side, S)
  scalar_t* dsep_;             // (GS*H) out: dL/d(hidden-side pre-activation) of separate blocks
  scalar_t* out_;              // (H) out: the forward's output before the projection, or null

  Vec gate(int64_t k, int64_t j, int64_t n) const { return Vec::loadu(gates_ + k * H + j, n); }
  Vec saved_sep(int64_t k, int64_t j, int64_t n) const {
    return Vec::loadu(saved_sep_ + k * H + j, n);
  }
  Vec h(int64_t j, int64_t n) const { return Vec::loadu(h_ + j, n); }
  Vec h_prev(int64_t j, int64_t n) const { return Vec::loadu(h_prev_ + j, n); }
  Vec c(int64_t j, int64_t n) const { return Vec::loadu(c_ + j, n); }
  Vec c_prev(int64_t j, int64_t n) const { return Vec::loadu(c_prev_ + j, n); }
  Vec dc(int64_t j, int64_t n) const { return Vec::loadu(dc_ + j, n); }
  void set_dc(int64_t j, int64_t n, const Vec& v) const { v.store(dc_ + j, n); }
  void set_dg(int64_t k, int64_t j, int64_t n, const Vec& v) const { v.store(dg_ + k * H + j, n); }
  void set_dsep(int64_t k, int64_t j, int64_t n, const Vec& v) const {
    v.store(dsep_ + k * H + j, n);
  }
  void set_out(int64_t j, int64_t n, const Vec& v) const {
    if (out_) v.store(out_ + j, n);
  }
};

// Forward arguments, all contiguous in scalar_t (the accumulation dtype): x (T, B, I), h0 (B, P),
// c0 (B, H) or undefined, w_ih (G*H, I), w_hh (G*H, P), w_hr (P, H) or undefined, b_ih / b_hh
// (G*H,) or both undefined; len: host lengths (B,) or null.
struct FwdIn {
  Tensor x, h0, c0, w_ih, w_hh, w_hr, b_ih, b_hh;
  const int64_t* len;
  bool need_saved;
};
// y (T, B, P), hn (B, P), cn (B, H) or undefined; gates (T, B, G*H) and extra (T, B, H) (cell
// states or separate pre-activations) when saved, else empty.
struct FwdOut {
  Tensor y, hn, cn, gates, extra;
};

// Forward of one layer (see the file comment).
template <class Cell, typename scalar_t>
FwdOut forward(const FwdIn& a) {
  using Vec = Vectorized<scalar_t>;
  constexpr int64_t G = Cell::G, S = Cell::S, GS = G - S;
  // The second saved tensor is (T, B, H): the cell states or one separate block, not both.
  static_assert(GS <= 1 && !(GS == 1 && Cell::kCellState), "saved layout has one (T, B, H) extra");
  const bool proj = a.w_hr.defined();
  const bool save = a.need_saved;
  const int64_t T = a.x.size(0), B = a.x.size(1), I = a.x.size(2), H = a.w_hh.size(0) / G;
  const int64_t P = a.w_hh.size(1);
  const auto opts = a.x.options();

  const PanelWeights<scalar_t> w_x(a.w_ih, /*transposed=*/true, G);             // x W_ih^T
  const PanelWeights<scalar_t> w_hs(a.w_hh.narrow(0, 0, S * H), true, S);      // h W_hh^T, S
  std::optional<PanelWeights<scalar_t>> w_hsep, w_r;
  if (GS > 0) w_hsep.emplace(a.w_hh.narrow(0, S * H, GS * H), true, GS);       // h W_hh^T, GS
  if (proj) w_r.emplace(a.w_hr, true, 1);                                      // r W_hr^T
  // Biases as the pointwise pass adds them: b_ih + b_hh for the shared blocks, b_ih and b_hh
  // apart for the separate ones.
  Tensor bias, bias_sep;
  if (a.b_ih.defined()) {
    bias = a.b_ih.clone();
    bias.narrow(0, 0, S * H).add_(a.b_hh.narrow(0, 0, S * H));
    if (GS > 0) bias_sep = a.b_hh.narrow(0, S * H, GS * H).contiguous();
  }
  Tensor y = at::empty({T, B, P}, opts);
  Tensor hbuf = at::empty({2, B, P}, opts);  // h_{t-1} / h_t, alternating
  hbuf[0].copy_(a.h0);
  // The input projection x W_ih^T runs for Tb steps at once, each thread for its own columns,
  // into a (Tb, B, G*H) block to which the step's recurrent GEMM then adds: at small batches a
  // per-step GEMM has fewer rows than the register tile (B = 1: one row, load-bound), while
  // Tb * B >= kProjRows rows run the tile full. At B >= kProjRows, Tb = 1 (one step at a time).
  const int64_t Tb = std::min<int64_t>(T, std::max<int64_t>(1, (kProjRows + B - 1) / std::max<int64_t>(B, 1)));
  Tensor pre = at::empty({Tb, B, G * H}, opts);
  Tensor sep = at::empty({B, GS * H}, opts);
  Tensor rbuf = proj ? at::zeros({B, H}, opts) : Tensor();  // the cell's output before W_hr
  Tensor gates = save && Cell::kSavesGates ? at::empty({T, B, G * H}, opts) : a.x.new_empty({0});
  Tensor saved_sep = save && GS > 0 ? at::empty({T, B, GS * H}, opts) : a.x.new_empty({0});
  // The cell state lives in cs[t] when it is saved, else in one (B, H) buffer updated in place.
  Tensor cs;
  if constexpr (Cell::kCellState) cs = save ? at::empty({T, B, H}, opts) : a.c0.clone();

  const scalar_t* xp = a.x.data_ptr<scalar_t>();
  scalar_t* yp = y.data_ptr<scalar_t>();
  scalar_t* hbp = hbuf.data_ptr<scalar_t>();
  scalar_t* prp = pre.data_ptr<scalar_t>();
  scalar_t* sepp = sep.data_ptr<scalar_t>();
  scalar_t* rp = proj ? rbuf.data_ptr<scalar_t>() : nullptr;
  scalar_t* gp = gates.numel() ? gates.data_ptr<scalar_t>() : nullptr;
  scalar_t* ssp = saved_sep.numel() ? saved_sep.data_ptr<scalar_t>() : nullptr;
  scalar_t* csp = cs.defined() ? cs.data_ptr<scalar_t>() : nullptr;
  const scalar_t* c0p = cs.defined() ? a.c0.data_ptr<scalar_t>() : nullptr;
  const scalar_t* bp = bias.defined() ? bias.data_ptr<scalar_t>() : nullptr;
  const scalar_t* bsp = bias_sep.defined() ? bias_sep.data_ptr<scalar_t>() : nullptr;
  const int64_t* len = a.len;

  // Phase 1 (units of H): GEMMs and the cell's pointwise update.
  auto cell_phase = [&](int64_t t, int64_t u0, int64_t u1) {
    const scalar_t* h_prev = hbp + (t % 2) * B * P;
    scalar_t* h_next = hbp + ((t + 1) % 2) * B * P;
    const scalar_t* c_prev = !save ? csp : (t == 0 ? c0p : csp + (t - 1) * B * H);
    scalar_t* c_out = save ? csp + t * B * H : csp;
    scalar_t* pre_t = prp + (t % Tb) * B * G * H;
    w_hs.run(h_prev, P, B, u0, u1, pre_t, G * H, true);
    if (GS > 0) w_hsep->run(h_prev, P, B, u0, u1, sepp, GS * H, false);
    for (int64_t b = 0; b < B; ++b) {
      FwdRow<scalar_t> row{H,
                           pre_t + b * G * H,
                           bp,
                           sepp + b * GS * H,
                           bsp,
                           h_prev + b * P,
                           csp ? c_prev + b * H : nullptr,
                           csp ? c_out + b * H : nullptr,
                           gp ? gp + (t * B + b) * G * H : nullptr,
                           ssp ? ssp + (t * B + b) * GS * H : nullptr};
      scalar_t* yr = yp + (t * B + b) * P;
      scalar_t* hn = h_next + b * P;
      if (!step_valid(len, b, t)) {  // padding: y = 0, state frozen, zeros saved
        if (!proj) {
          zero_row(yr + u0, u1 - u0);
          std::copy(row.h_prev_ + u0, row.h_prev_ + u1, hn + u0);
        }
        for (int64_t k = 0; row.gates_ && k < G; ++k) zero_row(row.gates_ + k * H + u0, u1 - u0);
        for (int64_t k = 0; row.saved_sep_ && k < GS; ++k) {
          zero_row(row.saved_sep_ + k * H + u0, u1 - u0);
        }
        if (csp && save) std::copy(row.c_prev_ + u0, row.c_prev_ + u1, row.c_ + u0);
        continue;
      }
      scalar_t* r = rp ? rp + b * H : nullptr;
      for_each_vec<scalar_t>(u0, u1, [&](int64_t j, int64_t n) {
        const Vec out = Cell::template fwd<Vec>(row, j, n);
        if (r) {
          out.store(r + j, n);
        } else {
          out.store(hn + j, n);
          out.store(yr + j, n);
        }
      });
    }
  };
  // Phase 2 (units of P, projection only): h_t = r W_hr^T.
  auto proj_phase = [&](int64_t t, int64_t v0, int64_t v1) {
    const scalar_t* h_prev = hbp + (t % 2) * B * P;
    scalar_t* h_next = hbp + ((t + 1) % 2) * B * P;
    scalar_t* yt = yp + t * B * P;
    w_r->run(rp, H, B, v0, v1, yt, P, false);
    for (int64_t b = 0; b < B; ++b) {
      scalar_t* yr = yt + b * P;
      if (step_valid(len, b, t)) {
        std::copy(yr + v0, yr + v1, h_next + b * P + v0);
      } else {
        zero_row(yr + v0, v1 - v0);
        std::copy(h_prev + b * P + v0, h_prev + b * P + v1, h_next + b * P + v0);
      }
    }
  };
  const int64_t flops = 2 * B * (G * H * (I + P) + (proj ? P * H : 0));
  // This thread's columns of x W_ih^T for steps t .. t+Tb-1: needs only x, so each thread runs
  // it while the others finish the previous step (for_each_step's ahead work).
  auto projection = [&](int64_t t, int64_t u0, int64_t u1) {
    if (t % Tb == 0) w_x.run(xp + t * B * I, I, std::min(Tb, T - t) * B, u0, u1, prp, G * H, false);
  };
  for_each_step(T, /*reverse=*/false, H, flops, cell_phase, proj ? P : 0, proj_phase, projection);

  FwdOut out{y, hbuf[T % 2].clone(), Tensor(), gates, saved_sep};
  if constexpr (Cell::kCellState) {
    // Frozen rows copied their state forward, so cs[T-1] is every row's final cell state.
    out.cn = save ? cs.select(0, T - 1).clone() : cs;
    if (save) out.extra = cs;
  }
  return out;
}

// Backward arguments: as FwdIn plus y (T, B, P), the saved gates (T, B, G*H) and extra (T, B, H),
// dy (T, B, P), dhn (B, P), dcn (B, H) or undefined; all in scalar_t.
struct BwdIn {
  Tensor x, h0, c0, w_ih, w_hh, w_hr, y, gates, extra, dy, dhn, dcn;
  const int64_t* len;
};
// dx (T, B, I), dh0 (B, P), dc0 (B, H) or undefined, dw_ih (G*H, I), dw_hh (G*H, P),
// db_ih, db_hh (G*H,) (the same values unless GS > 0), dw_hr (P, H) or undefined.
struct BwdOut {
  Tensor dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr;
};

// Backward of one layer (see the file comment).
template <class Cell, typename scalar_t>
BwdOut backward(const BwdIn& a) {
  using Vec = Vectorized<scalar_t>;
  constexpr int64_t G = Cell::G, S = Cell::S, GS = G - S;
  const bool proj = a.w_hr.defined();
  const int64_t T = a.x.size(0), B = a.x.size(1), I = a.x.size(2), H = a.w_hh.size(0) / G;
  const int64_t P = a.w_hh.size(1);
  const auto opts = a.x.options();

  Tensor dg = at::empty({T, B, G * H}, opts);     // dL/d(pre-activations), input side
  Tensor dsep = at::empty({T, B, GS * H}, opts);  // hidden side of the separate blocks
  // dh holds the gradient flowing into h_t from later steps: valid rows replace it by the cell's
  // direct term, so that the next step's GEMM (accumulating) adds dG[t] W_hh to it, while padded
  // rows keep theirs. dc is updated in place the same way. A thread touches only its own units.
  Tensor dh = a.dhn.clone();
  Tensor dc = Cell::kCellState ? a.dcn.clone() : Tensor();
  // With a projection: dL/dh_t of every step (zero at padded steps) and the cell's outputs r_t,
  // for dW_hr = sum_t dh_t^T r_t, and dout = dh_t W_hr of the current step.
  Tensor dht = proj ? at::empty({T, B, P}, opts) : Tensor();
  Tensor rs = proj ? at::empty({T, B, H}, opts) : Tensor();
  Tensor dout = proj ? at::empty({B, H}, opts) : Tensor();
  // dG W_hh = dG[:, first S blocks] W_hh[S rows] + dsep W_hh[GS rows]: GEMMs into the same dh.
  const PanelWeights<scalar_t> w_hs(a.w_hh.narrow(0, 0, S * H), /*transposed=*/false, 1);
  std::optional<PanelWeights<scalar_t>> w_hsep, w_r;
  if (GS > 0) w_hsep.emplace(a.w_hh.narrow(0, S * H, GS * H), false, 1);
  if (proj) w_r.emplace(a.w_hr, false, 1);  // dh_t W_hr

  scalar_t* dgp = dg.data_ptr<scalar_t>();
  scalar_t* dsp = dsep.data_ptr<scalar_t>();
  scalar_t* dhp = dh.data_ptr<scalar_t>();
  scalar_t* dcp = dc.defined() ? dc.data_ptr<scalar_t>() : nullptr;
  scalar_t* dhtp = proj ? dht.data_ptr<scalar_t>() : nullptr;
  scalar_t* rsp = proj ? rs.data_ptr<scalar_t>() : nullptr;
  scalar_t* doutp = proj ? dout.data_ptr<scalar_t>() : nullptr;
  const scalar_t* gp = Cell::kSavesGates ? a.gates.data_ptr<scalar_t>() : nullptr;
  const scalar_t* ep = Cell::kExtraName ? a.extra.data_ptr<scalar_t>() : nullptr;
  const scalar_t* yp = a.y.data_ptr<scalar_t>();
  const scalar_t* h0p = a.h0.data_ptr<scalar_t>();
  const scalar_t* c0p = a.c0.defined() ? a.c0.data_ptr<scalar_t>() : nullptr;
  const scalar_t* dyp = a.dy.data_ptr<scalar_t>();
  const int64_t* len = a.len;

  // dh (units [p0, p1) of P) += dG[t] W_hh.
  auto recurrent = [&](int64_t t, int64_t p0, int64_t p1) {
    w_hs.run(dgp + t * B * G * H, G * H, B, p0, p1, dhp, P, true);
    if (GS > 0) w_hsep->run(dsp + t * B * GS * H, GS * H, B, p0, p1, dhp, P, true);
  };
  // The cell's gradients of units [u0, u1) at step t; dout_of(b, j, n) is dL/d(output) there.
  auto cell_grads = [&](int64_t t, int64_t u0, int64_t u1, auto dout_of, auto carry) {
    for (int64_t b = 0; b < B; ++b) {
      const int64_t tb = t * B + b;
      BwdRow<scalar_t> row{H,
                           gp ? gp + tb * G * H : nullptr,
                           GS > 0 && ep ? ep + tb * GS * H : nullptr,
                           yp + tb * P,
                           t == 0 ? h0p + b * P : yp + (tb - B) * P,
                           Cell::kCellState ? ep + tb * H : nullptr,
                           Cell::kCellState ? (t == 0 ? c0p + b * H : ep + (tb - B) * H) : nullptr,
                           dcp ? dcp + b * H : nullptr,
                           dgp + tb * G * H,
                           dsp + tb * GS * H,
                           rsp ? rsp + tb * H : nullptr};
      if (!step_valid(len, b, t)) {
        for (int64_t k = 0; k < G; ++k) zero_row(row.dg_ + k * H + u0, u1 - u0);
        for (int64_t k = 0; k < GS; ++k) zero_row(row.dsep_ + k * H + u0, u1 - u0);
        if (row.out_) zero_row(row.out_ + u0, u1 - u0);  // finite: dW_hr multiplies it by 0
        continue;
      }
      for_each_vec<scalar_t>(u0, u1, [&](int64_t j, int64_t n) {
        carry(b, j, n, Cell::template bwd<Vec>(row, j, n, dout_of(b, j, n)));
      });
    }
  };

  if (!proj) {
    // One phase: dh_t = dy[t] + dh is the cell's dout; its direct term becomes the new dh.
    auto step = [&](int64_t t, int64_t u0, int64_t u1) {
      if (t + 1 < T) recurrent(t + 1, u0, u1);
      const scalar_t* dyt = dyp + t * B * P;
      cell_grads(
          t, u0, u1,
          [&](int64_t b, int64_t j, int64_t n) {
            return Vec::loadu(dyt + b * P + j, n) + Vec::loadu(dhp + b * P + j, n);
          },
          [&](int64_t b, int64_t j, int64_t n, const Vec& v) { v.store(dhp + b * P + j, n); });
    };
    for_each_step(T, /*reverse=*/true, H, 2 * B * G * H * P, step, 0, step);
  } else {
    // Phase 1 (units of P): dh_t = dy[t] + dh + dG[t+1] W_hh; the cell has no direct term
    // through a projection, so dh restarts from 0.
    auto dh_phase = [&](int64_t t, int64_t p0, int64_t p1) {
      if (t + 1 < T) recurrent(t + 1, p0, p1);
      for (int64_t b = 0; b < B; ++b) {
        scalar_t* d = dhtp + (t * B + b) * P;
        if (!step_valid(len, b, t)) {
          zero_row(d + p0, p1 - p0);
          continue;
        }
        const scalar_t* dyr = dyp + (t * B + b) * P;
        scalar_t* dhr = dhp + b * P;
        for_each_vec<scalar_t>(p0, p1, [&](int64_t j, int64_t n) {
          (Vec::loadu(dyr + j, n) + Vec::loadu(dhr + j, n)).store(d + j, n);
          Vec(scalar_t(0)).store(dhr + j, n);
        });
      }
    };
    // Phase 2 (units of H): dout = dh_t W_hr, then the cell.
    auto cell_phase = [&](int64_t t, int64_t u0, int64_t u1) {
      w_r->run(dhtp + t * B * P, P, B, u0, u1, doutp, H, false);
      cell_grads(
          t, u0, u1,
          [&](int64_t b, int64_t j, int64_t n) { return Vec::loadu(doutp + b * H + j, n); },
          [](int64_t, int64_t, int64_t, const Vec&) {});
    };
    for_each_step(T, /*reverse=*/true, P, 2 * B * H * (G * P + P), dh_phase, H, cell_phase);
  }
  for_each_chunk(P, 2 * B * G * H * P, [&](int64_t p0, int64_t p1) {
    recurrent(0, p0, p1);  // dh0 += dG[0] W_hh
  });

  BwdOut out;
  out.dh0 = dh;
  out.dc0 = dc;
  out.dx = at::empty({T, B, I}, opts);
  {
    const PanelWeights<scalar_t> w_x(a.w_ih, /*transposed=*/false, /*groups=*/1);  // dG W_ih
    scalar_t* dxp = out.dx.data_ptr<scalar_t>();
    for_each_chunk(I, 2 * T * B * G * H * I, [&](int64_t n0, int64_t n1) {
      w_x.run(dgp, G * H, T * B, n0, n1, dxp, I, false);
    });
  }
  const Tensor dg2d = dg.view({T * B, G * H});
  out.dw_ih = at::mm(dg2d.t(), a.x.view({T * B, I}));
  // d (T, B, n) -> d^T h_prev (n, P): h_{t-1} is h0 for t = 0 and y[t-1] after it (padded steps
  // have zero gradients, so their y is unused).
  auto times_h_prev = [&](const Tensor& d) {
    const int64_t n = d.size(2);
    Tensor r = at::mm(d[0].t(), a.h0);
    if (T > 1) {
      r.addmm_(d.narrow(0, 1, T - 1).reshape({(T - 1) * B, n}).t(),
               a.y.narrow(0, 0, T - 1).view({(T - 1) * B, P}));
    }
    return r;
  };
  out.db_ih = dg2d.sum(0);
  if (GS == 0) {
    out.dw_hh = times_h_prev(dg);
    out.db_hh = out.db_ih;
  } else {
    const Tensor dg_s = dg.narrow(2, 0, S * H);  // = the hidden side's gradient of those blocks
    out.dw_hh = at::cat({times_h_prev(dg_s), times_h_prev(dsep)});
    out.db_hh = at::cat({dg_s.reshape({T * B, S * H}).sum(0), dsep.view({T * B, GS * H}).sum(0)});
  }
  if (proj) out.dw_hr = at::mm(dht.view({T * B, P}).t(), rs.view({T * B, H}));
  return out;
}

// ------------------------------------------------------------------------------ op boundary
// What an op passes in: the tensors of its schema in x's dtype (undefined where the cell or call
// has none), the op's name for messages.
struct OpArgs {
  const char* op;
  Tensor x, h0, c0, w_ih, w_hh, w_hr;
  std::optional<Tensor> b_ih, b_hh, lengths;
};

// Checks, converts to the accumulation dtype, runs forward<Cell> and converts y, hn, cn back.
template <class Cell>
FwdOut run_forward(const OpArgs& a, bool need_saved) {
  check_isa(a.op);
  const std::optional<Tensor> w_hr = a.w_hr.defined() ? std::optional<Tensor>(a.w_hr) : std::nullopt;
  TORCH_CHECK(Cell::kProj || !w_hr, a.op, ": this cell has no projection (w_hr)");
  const Dims d = check_inputs(a.op, Cell::G, a.x, a.h0, a.c0.defined() ? &a.c0 : nullptr, a.w_ih,
                              a.w_hh, a.b_ih, a.b_hh, w_hr, a.lengths);
  if (a.lengths) check_lengths_values(a.op, *a.lengths, d.T);
  const auto dt = a.x.scalar_type();
  const Tensor xa = to_acc(a.x);
  auto acc = [](const Tensor& t) { return t.defined() ? to_acc(t) : t; };
  FwdIn in{xa,
           acc(a.h0),
           acc(a.c0),
           acc(a.w_ih),
           acc(a.w_hh),
           acc(a.w_hr),
           a.b_ih ? to_acc(*a.b_ih) : Tensor(),
           a.b_hh ? to_acc(*a.b_hh) : Tensor(),
           lengths_ptr(a.lengths),
           need_saved};
  FwdOut out;
  AT_DISPATCH_FLOATING_TYPES(xa.scalar_type(), "fused_rnn::cpu::forward", [&] { out = forward<Cell, scalar_t>(in); });
  out.y = from_acc(out.y, dt);
  out.hn = from_acc(out.hn, dt);
  if (out.cn.defined()) out.cn = from_acc(out.cn, dt);
  if (!out.extra.defined()) out.extra = a.x.new_empty({0}, a.x.options().dtype(acc_dtype(dt)));
  return out;
}

// Checks the backward's own arguments (y, saved, incoming gradients), converts to the
// accumulation dtype, runs backward<Cell> and converts the gradients back. dcn: LSTM only.
template <class Cell>
BwdOut run_backward(const OpArgs& a, const Tensor& y, const Tensor& gates, const Tensor& extra,
                    const Tensor& dy, const Tensor& dhn, const Tensor& dcn) {
  check_isa(a.op);
  const std::optional<Tensor> w_hr = a.w_hr.defined() ? std::optional<Tensor>(a.w_hr) : std::nullopt;
  const Dims d = check_inputs(a.op, Cell::G, a.x, a.h0, a.c0.defined() ? &a.c0 : nullptr, a.w_ih,
                              a.w_hh, std::nullopt, std::nullopt, w_hr, a.lengths);
  const auto dt = a.x.scalar_type(), acc_dt = acc_dtype(dt);
  check_tensor(a.op, "y", y, {d.T, d.B, d.P}, dt, a.x);
  if (Cell::kSavesGates) check_tensor(a.op, "gates", gates, {d.T, d.B, Cell::G * d.H}, acc_dt, a.x);
  if (Cell::kExtraName) check_tensor(a.op, Cell::kExtraName, extra, {d.T, d.B, d.H}, acc_dt, a.x);
  check_tensor(a.op, "dy", dy, {d.T, d.B, d.P}, dt, a.x);
  check_tensor(a.op, "dhn", dhn, {d.B, d.P}, dt, a.x);
  if (Cell::kCellState) check_tensor(a.op, "dcn", dcn, {d.B, d.H}, dt, a.x);
  if (a.lengths) check_lengths_values(a.op, *a.lengths, d.T);
  auto acc = [](const Tensor& t) { return t.defined() ? to_acc(t) : t; };
  BwdIn in{acc(a.x), acc(a.h0), acc(a.c0), acc(a.w_ih), acc(a.w_hh), acc(a.w_hr), acc(y),
           gates,    extra,     acc(dy),   acc(dhn),    acc(dcn),    lengths_ptr(a.lengths)};
  BwdOut out;
  AT_DISPATCH_FLOATING_TYPES(acc_dt, "fused_rnn::cpu::backward", [&] { out = backward<Cell, scalar_t>(in); });
  for (Tensor* t : {&out.dx, &out.dh0, &out.dc0, &out.dw_ih, &out.dw_hh, &out.db_ih, &out.db_hh,
                    &out.dw_hr}) {
    if (t->defined()) *t = from_acc(*t, dt);
  }
  return out;
}

}  // namespace fused_rnn::cpu
