// The LSTM cell on the CPU: fused_rnn::lstm_fwd and fused_rnn::lstm_bwd over the shared
// recurrence (recurrence.h), with torch's gate order i, f, g, o and optional projection:
//   i, f, o = sigmoid(.), g = tanh(.) of x W_ih^T + b_ih + h W_hh^T + b_hh,
//   c' = f c + i g,   h' = o tanh(c')   (proj_size > 0: h' = (o tanh(c')) W_hr^T).
// Saved for backward: gates (T, B, 4H) post-activation i, f, g, o and cs (T, B, H), c after each
// step.
#include "kernels.h"
#include "recurrence.h"

namespace fused_rnn::cpu {
namespace {

struct LstmCell {
  static constexpr int64_t G = 4, S = 4;
  static constexpr bool kCellState = true, kSavesGates = true, kProj = true;
  static constexpr const char* kExtraName = "cs";

  template <class Vec, class Row>
  static Vec fwd(const Row& r, int64_t j, int64_t n) {
    const Vec i = vsigmoid(r.pre(0, j, n));
    const Vec f = vsigmoid(r.pre(1, j, n));
    const Vec g = vtanh(r.pre(2, j, n));
    const Vec o = vsigmoid(r.pre(3, j, n));
    const Vec c = f * r.c_prev(j, n) + i * g;
    r.set_c(j, n, c);
    r.save_gate(0, j, n, i);
    r.save_gate(1, j, n, f);
    r.save_gate(2, j, n, g);
    r.save_gate(3, j, n, o);
    return o * vtanh(c);
  }

  // dout = dL/d(o tanh(c)); h_{t-1} gets nothing directly (only through W_hh).
  template <class Vec, class Row>
  static Vec bwd(const Row& r, int64_t j, int64_t n, const Vec& dout) {
    const Vec one(1);
    const Vec i = r.gate(0, j, n), f = r.gate(1, j, n), g = r.gate(2, j, n), o = r.gate(3, j, n);
    const Vec tc = vtanh(r.c(j, n));
    r.set_out(j, n, o * tc);
    const Vec dc = r.dc(j, n) + dout * o * (one - tc * tc);
    r.set_dg(0, j, n, dc * g * i * (one - i));
    r.set_dg(1, j, n, dc * r.c_prev(j, n) * f * (one - f));
    r.set_dg(2, j, n, dc * i * (one - g * g));
    r.set_dg(3, j, n, dout * tc * o * (one - o));
    r.set_dc(j, n, dc * f);
    return Vec(0);
  }
};

constexpr const char* kFwd = "fused_rnn::lstm_fwd";
constexpr const char* kBwd = "fused_rnn::lstm_bwd";

Tensor or_undefined(const std::optional<Tensor>& t) { return t ? *t : Tensor(); }

}  // namespace

// Op entry points: registered, behind the CPU check, by dispatch.cpp (a baseline-ISA TU).
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_fwd(
    const Tensor& x, const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
    const std::optional<Tensor>& b_ih, const std::optional<Tensor>& b_hh,
    const std::optional<Tensor>& w_hr, const std::optional<Tensor>& lengths, bool need_saved) {
  const FwdOut o = run_forward<LstmCell>(
      {kFwd, x, h0, c0, w_ih, w_hh, or_undefined(w_hr), b_ih, b_hh, lengths}, need_saved);
  return {o.y, o.hn, o.cn, o.gates, o.extra};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_bwd(
    const Tensor& x, const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
    const std::optional<Tensor>& w_hr, const Tensor& y, const Tensor& gates, const Tensor& cs,
    const std::optional<Tensor>& lengths, const Tensor& dy, const Tensor& dhn, const Tensor& dcn) {
  const BwdOut o = run_backward<LstmCell>(
      {kBwd, x, h0, c0, w_ih, w_hh, or_undefined(w_hr), std::nullopt, std::nullopt, lengths}, y,
      gates, cs, dy, dhn, dcn);
  const Tensor dw_hr = o.dw_hr.defined() ? o.dw_hr : x.new_empty({0});
  return {o.dx, o.dh0, o.dc0, o.dw_ih, o.dw_hh, o.db_ih, dw_hr};
}

}  // namespace fused_rnn::cpu

