// The Elman RNN cell on the CPU: fused_rnn::rnn_fwd and fused_rnn::rnn_bwd over the shared
// recurrence (recurrence.h):  h' = act(x W_ih^T + b_ih + h W_hh^T + b_hh),  act = tanh or relu.
// Nothing is saved besides y: y[t] = h_t gives the derivative, tanh' = 1 - h^2, relu' = (h > 0)
// (as torch's relu backward: 0 at 0).
#include "kernels.h"
#include "recurrence.h"

namespace fused_rnn::cpu {
namespace {

template <bool kRelu>
struct RnnCell {
  static constexpr int64_t G = 1, S = 1;
  static constexpr bool kCellState = false, kSavesGates = false, kProj = false;
  static constexpr const char* kExtraName = nullptr;

  template <class Vec, class Row>
  static Vec fwd(const Row& r, int64_t j, int64_t n) {
    const Vec pre = r.pre(0, j, n);
    if constexpr (kRelu) {
      return at::vec::maximum(pre, Vec(0));  // NaN propagates, as in torch.relu
    } else {
      return vtanh(pre);
    }
  }

  template <class Vec, class Row>
  static Vec bwd(const Row& r, int64_t j, int64_t n, const Vec& dout) {
    const Vec h = r.h(j, n);
    if constexpr (kRelu) {
      r.set_dg(0, j, n, Vec::blendv(Vec(0), dout, h > Vec(0)));
    } else {
      r.set_dg(0, j, n, dout * (Vec(1) - h * h));
    }
    return Vec(0);
  }
};

constexpr const char* kFwd = "fused_rnn::rnn_fwd";
constexpr const char* kBwd = "fused_rnn::rnn_bwd";

}  // namespace

// Op entry points: registered, behind the CPU check, by dispatch.cpp (a baseline-ISA TU).
std::tuple<Tensor, Tensor> rnn_fwd(const Tensor& x, const Tensor& h0, const Tensor& w_ih,
                                   const Tensor& w_hh, const std::optional<Tensor>& b_ih,
                                   const std::optional<Tensor>& b_hh,
                                   const std::optional<Tensor>& lengths, bool relu,
                                   bool need_saved) {
  const OpArgs a{kFwd, x, h0, Tensor(), w_ih, w_hh, Tensor(), b_ih, b_hh, lengths};
  const FwdOut o = relu ? run_forward<RnnCell<true>>(a, need_saved)
                        : run_forward<RnnCell<false>>(a, need_saved);
  return {o.y, o.hn};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> rnn_bwd(
    const Tensor& x, const Tensor& h0, const Tensor& w_ih, const Tensor& w_hh, const Tensor& y,
    const std::optional<Tensor>& lengths, bool relu, const Tensor& dy, const Tensor& dhn) {
  const OpArgs a{kBwd, x, h0, Tensor(), w_ih, w_hh, Tensor(), std::nullopt, std::nullopt, lengths};
  const BwdOut o = relu ? run_backward<RnnCell<true>>(a, y, Tensor(), Tensor(), dy, dhn, Tensor())
                        : run_backward<RnnCell<false>>(a, y, Tensor(), Tensor(), dy, dhn, Tensor());
  return {o.dx, o.dh0, o.dw_ih, o.dw_hh, o.db_ih};
}

}  // namespace fused_rnn::cpu

