// The GRU cell on the CPU: fused_rnn::gru_fwd and fused_rnn::gru_bwd over the shared recurrence
// (recurrence.h), with torch's gate order r, z, n and its separate b_hn:
//   r = sigmoid(gi_r + gh_r), z = sigmoid(gi_z + gh_z), n = tanh(gi_n + r * gh_n),
//   h' = (1 - z) * n + z * h,   with gi = x W_ih^T + b_ih and gh = h W_hh^T + b_hh.
// The r and z blocks sum both sides (S = 2); the n block keeps gh_n apart. Saved for backward:
// gates (T, B, 3H) r, z, n and ghn (T, B, H) = gh_n of each step.
#include "kernels.h"
#include "recurrence.h"

namespace fused_rnn::cpu {
namespace {

struct GruCell {
  static constexpr int64_t G = 3, S = 2;
  static constexpr bool kCellState = false, kSavesGates = true, kProj = false;
  static constexpr const char* kExtraName = "ghn";

  template <class Vec, class Row>
  static Vec fwd(const Row& r, int64_t j, int64_t n) {
    const Vec rg = vsigmoid(r.pre(0, j, n));
    const Vec z = vsigmoid(r.pre(1, j, n));
    const Vec ghn = r.sep(0, j, n);
    const Vec nn = vtanh(r.pre(2, j, n) + rg * ghn);
    r.save_gate(0, j, n, rg);
    r.save_gate(1, j, n, z);
    r.save_gate(2, j, n, nn);
    r.save_sep(0, j, n, ghn);
    return nn + z * (r.h_prev(j, n) - nn);  // (1 - z) n + z h
  }

  // dout = dL/dh'; h gets z * dout directly.
  template <class Vec, class Row>
  static Vec bwd(const Row& r, int64_t j, int64_t n, const Vec& dout) {
    const Vec one(1);
    const Vec rg = r.gate(0, j, n), z = r.gate(1, j, n), nn = r.gate(2, j, n);
    const Vec dn = dout * (one - z) * (one - nn * nn);
    r.set_dg(0, j, n, dn * r.saved_sep(0, j, n) * rg * (one - rg));
    r.set_dg(1, j, n, dout * (r.h_prev(j, n) - nn) * z * (one - z));
    r.set_dg(2, j, n, dn);
    r.set_dsep(0, j, n, dn * rg);
    return dout * z;
  }
};

constexpr const char* kFwd = "fused_rnn::gru_fwd";
constexpr const char* kBwd = "fused_rnn::gru_bwd";

}  // namespace

// Op entry points: registered, behind the CPU check, by dispatch.cpp (a baseline-ISA TU).
std::tuple<Tensor, Tensor, Tensor, Tensor> gru_fwd(
    const Tensor& x, const Tensor& h0, const Tensor& w_ih, const Tensor& w_hh,
    const std::optional<Tensor>& b_ih, const std::optional<Tensor>& b_hh,
    const std::optional<Tensor>& lengths, bool need_saved) {
  const FwdOut o = run_forward<GruCell>(
      {kFwd, x, h0, Tensor(), w_ih, w_hh, Tensor(), b_ih, b_hh, lengths}, need_saved);
  return {o.y, o.hn, o.gates, o.extra};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> gru_bwd(
    const Tensor& x, const Tensor& h0, const Tensor& w_ih, const Tensor& w_hh, const Tensor& y,
    const Tensor& gates, const Tensor& ghn, const std::optional<Tensor>& lengths, const Tensor& dy,
    const Tensor& dhn) {
  const BwdOut o = run_backward<GruCell>(
      {kBwd, x, h0, Tensor(), w_ih, w_hh, Tensor(), std::nullopt, std::nullopt, lengths}, y,
      gates, ghn, dy, dhn, Tensor());
  return {o.dx, o.dh0, o.dw_ih, o.dw_hh, o.db_ih, o.db_hh};
}

}  // namespace fused_rnn::cpu

