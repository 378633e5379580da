// Fused LSTM layer on the CPU: fused_rnn::lstm_fwd and fused_rnn::lstm_bwd.
//
// Dimension legend: T time steps, B batch, I input features, H hidden size; gates in torch's
// order i, f, g, o, so a (B, 4H) gate row is [i | f | g | o], H columns each.
//
// Forward: the input projection of every step is one GEMM (T*B, I) x (I, 4H) written into the
// `gates` buffer; each step adds h_{t-1} W_hh^T into its slice of that buffer with one GEMM and
// then runs one fused, vectorised pointwise pass per batch row that adds b_ih + b_hh and turns the
// pre-activations into i, f, g, o (stored back in place), c_t and h_t. Nothing is allocated inside
// the time loop.
// Backward: the reverse time loop runs one pointwise pass (gate gradients dG[t]) and one GEMM
// (dG[t] W_hh -> dh_{t-1}) per step; dx, dW_ih, dW_hh and db are large GEMMs / one sum over all
// steps after the loop.
// Per-sequence lengths: a row whose step t is padding (t >= lengths[b]) writes y = 0, keeps its
// state, and gets zero gate gradients, so its state gradient passes through unchanged.
#include <torch/library.h>

#include "../fused_rnn.h"
#include "cpu_common.h"
#include "step_gemm.h"

namespace fused_rnn::cpu {
namespace {

using at::Tensor;

constexpr const char* kFwd = "fused_rnn::lstm_fwd";
constexpr const char* kBwd = "fused_rnn::lstm_bwd";

// All tensors below are contiguous, in scalar_t (float or double).
//   x (T, B, I), h0 / c0 (B, H), w_ih (4H, I), w_hh (4H, H), bias (4H,) = b_ih + b_hh or undefined.
// Returns y (T, B, H), hn, cn (B, H), gates (T, B, 4H) and cs (T, B, H) -- the last two empty
// unless need_saved.
template <typename scalar_t>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_fwd_kernel(
    const Tensor& x, const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
    const Tensor& bias, const int64_t* len, bool need_saved) {
  using Vec = Vectorized<scalar_t>;
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2), H = h0.size(1), G = 4 * H;

  // Pre-activations of every step: x W_ih^T (one GEMM), then + h W_hh^T per step; the bias is
  // added in the pointwise pass, which saves the GEMM a full extra pass over this buffer.
  Tensor gates = at::empty({T, B, G}, x.options());
  Tensor g2d = gates.view({T * B, G});
  at::mm_out(g2d, x.view({T * B, I}), w_ih.t());
  const scalar_t* bp = bias.defined() ? bias.data_ptr<scalar_t>() : nullptr;
  Tensor y = at::empty({T, B, H}, x.options());
  Tensor h = h0.clone();  // state h_{t-1}, the left operand of the recurrent GEMM
  // The cell state lives in cs[t] when it is saved, else in one (B, H) buffer updated in place.
  Tensor cs = need_saved ? at::empty({T, B, H}, x.options()) : c0.clone();

  const std::vector<Tensor> g_steps = gates.unbind(0);  // views, made once
  const StepGemm<scalar_t> recurrent(w_hh, /*transpose=*/true, B);  // h W_hh^T
  scalar_t* gp = gates.data_ptr<scalar_t>();
  scalar_t* yp = y.data_ptr<scalar_t>();
  scalar_t* hp = h.data_ptr<scalar_t>();
  scalar_t* csp = cs.data_ptr<scalar_t>();
  const scalar_t* c0p = c0.data_ptr<scalar_t>();

  for (int64_t t = 0; t < T; ++t) {
    recurrent.run(h, g_steps[t], /*accumulate=*/true);
    const scalar_t* c_prev = !need_saved ? csp : (t == 0 ? c0p : csp + (t - 1) * B * H);
    scalar_t* c_out = need_saved ? csp + t * B * H : csp;
    for_each_row(B, G, [&](int64_t b) {
      scalar_t* g = gp + (t * B + b) * G;
      scalar_t* yr = yp + (t * B + b) * H;
      const scalar_t* cp = c_prev + b * H;
      scalar_t* c = c_out + b * H;
      scalar_t* hr = hp + b * H;
      if (!step_valid(len, b, t)) {  // padding: y = 0, state frozen
        zero_row(yr, H);
        if (need_saved) {
          zero_row(g, G);
          std::copy(cp, cp + H, c);
        }
        return;
      }
      // Pre-activation (with b_ih + b_hh) of the gate block starting at column `off`.
      auto pre = [&](int64_t off, int64_t n) {
        const Vec v = Vec::loadu(g + off, n);
        return bp ? v + Vec::loadu(bp + off, n) : v;
      };
      for_each_vec<scalar_t>(H, [&](int64_t j, int64_t n) {
        const Vec i = vsigmoid(pre(j, n));
        const Vec f = vsigmoid(pre(H + j, n));
        const Vec gg = pre(2 * H + j, n).tanh();
        const Vec o = vsigmoid(pre(3 * H + j, n));
        const Vec cn = f * Vec::loadu(cp + j, n) + i * gg;
        const Vec hn = o * cn.tanh();
        cn.store(c + j, n);
        hn.store(hr + j, n);
        hn.store(yr + j, n);
        if (need_saved) {
          i.store(g + j, n);
          f.store(g + H + j, n);
          gg.store(g + 2 * H + j, n);
          o.store(g + 3 * H + j, n);
        }
      });
    });
  }
  if (!need_saved) return {y, h, cs, x.new_empty({0}), x.new_empty({0})};
  // Frozen rows copied their state forward, so cs[T-1] is every row's final cell state.
  return {y, h, cs.select(0, T - 1).clone(), gates, cs};
}

// Tensors as in lstm_fwd_kernel plus y (T, B, H) and gates / cs from it, dy (T, B, H),
// dhn / dcn (B, H). Returns dx (T, B, I), dh0, dc0 (B, H), dw_ih (4H, I), dw_hh (4H, H), db (4H,).
template <typename scalar_t>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_bwd_kernel(
    const Tensor& x, const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
    const Tensor& y, const Tensor& gates, const Tensor& cs, const int64_t* len, const Tensor& dy,
    const Tensor& dhn, const Tensor& dcn) {
  using Vec = Vectorized<scalar_t>;
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2), H = h0.size(1), G = 4 * H;

  Tensor dgates = at::empty({T, B, G}, x.options());  // gradient of the pre-activations
  // dh holds the gradient flowing into h_{t} from later steps; valid rows consume it and reset
  // it to 0 so that the GEMM below (beta = 1) writes dG[t] W_hh there, while padded rows keep
  // theirs. dc is updated in place the same way.
  Tensor dh = dhn.clone();
  Tensor dc = dcn.clone();
  const std::vector<Tensor> dg_steps = dgates.unbind(0);
  const StepGemm<scalar_t> recurrent(w_hh, /*transpose=*/false, B);  // dG[t] W_hh
  scalar_t* dgp = dgates.data_ptr<scalar_t>();
  scalar_t* dhp = dh.data_ptr<scalar_t>();
  scalar_t* dcp = dc.data_ptr<scalar_t>();
  const scalar_t* gp = gates.data_ptr<scalar_t>();
  const scalar_t* csp = cs.data_ptr<scalar_t>();
  const scalar_t* c0p = c0.data_ptr<scalar_t>();
  const scalar_t* dyp = dy.data_ptr<scalar_t>();

  for (int64_t t = T - 1; t >= 0; --t) {
    for_each_row(B, G, [&](int64_t b) {
      scalar_t* dg = dgp + (t * B + b) * G;
      if (!step_valid(len, b, t)) {
        zero_row(dg, G);
        return;
      }
      const scalar_t* g = gp + (t * B + b) * G;
      const scalar_t* c = csp + (t * B + b) * H;
      const scalar_t* cp = t == 0 ? c0p + b * H : csp + ((t - 1) * B + b) * H;
      const scalar_t* dyr = dyp + (t * B + b) * H;
      scalar_t* dhr = dhp + b * H;
      scalar_t* dcr = dcp + b * H;
      const Vec one(scalar_t(1));
      for_each_vec<scalar_t>(H, [&](int64_t j, int64_t n) {
        const Vec i = Vec::loadu(g + j, n);
        const Vec f = Vec::loadu(g + H + j, n);
        const Vec gg = Vec::loadu(g + 2 * H + j, n);
        const Vec o = Vec::loadu(g + 3 * H + j, n);
        const Vec tc = Vec::loadu(c + j, n).tanh();
        const Vec dht = Vec::loadu(dyr + j, n) + Vec::loadu(dhr + j, n);
        const Vec dct = Vec::loadu(dcr + j, n) + dht * o * (one - tc * tc);
        (dct * gg * i * (one - i)).store(dg + j, n);
        (dct * Vec::loadu(cp + j, n) * f * (one - f)).store(dg + H + j, n);
        (dct * i * (one - gg * gg)).store(dg + 2 * H + j, n);
        (dht * tc * o * (one - o)).store(dg + 3 * H + j, n);
        (dct * f).store(dcr + j, n);
        Vec(scalar_t(0)).store(dhr + j, n);
      });
    });
    recurrent.run(dg_steps[t], dh, /*accumulate=*/true);  // dh_{t-1} += dG[t] W_hh
  }

  const Tensor dg2d = dgates.view({T * B, G});
  Tensor dx = at::mm(dg2d, w_ih).view({T, B, I});
  Tensor dw_ih = at::mm(dg2d.t(), x.view({T * B, I}));
  // h_{t-1} is h0 for t = 0 and y[t-1] after it (padded steps have dG = 0, so their y is unused).
  Tensor dw_hh = at::mm(dg_steps[0].t(), h0);
  if (T > 1) {
    dw_hh.addmm_(dgates.narrow(0, 1, T - 1).view({(T - 1) * B, G}).t(),
                 y.narrow(0, 0, T - 1).view({(T - 1) * B, H}));
  }
  Tensor db = dg2d.sum(0);
  return {dx, dh, dc, dw_ih, dw_hh, db};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_fwd(
    const Tensor& x, const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
    const std::optional<Tensor>& b_ih, const std::optional<Tensor>& b_hh,
    const std::optional<Tensor>& lengths, bool need_saved) {
  check_isa(kFwd);
  const Dims d = check_inputs(kFwd, 4, x, h0, &c0, w_ih, w_hh, b_ih, b_hh, lengths);
  if (lengths) check_lengths_values(kFwd, *lengths, d.T);
  const auto dt = x.scalar_type();
  const Tensor xa = to_acc(x);
  const Tensor bias = b_ih ? to_acc(*b_ih) + to_acc(*b_hh) : Tensor();
  std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(xa.scalar_type(), kFwd, [&] {
    out = lstm_fwd_kernel<scalar_t>(xa, to_acc(h0), to_acc(c0), to_acc(w_ih), to_acc(w_hh), bias,
                                    lengths_ptr(lengths), need_saved);
  });
  auto& [y, hn, cn, gates, cs] = out;
  return {from_acc(y, dt), from_acc(hn, dt), from_acc(cn, dt), gates, cs};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_bwd(
    const Tensor& x, const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
    const Tensor& y, const Tensor& gates, const Tensor& cs, const std::optional<Tensor>& lengths,
    const Tensor& dy, const Tensor& dhn, const Tensor& dcn) {
  check_isa(kBwd);
  const Dims d = check_inputs(kBwd, 4, x, h0, &c0, w_ih, w_hh, std::nullopt, std::nullopt, lengths);
  const auto dt = x.scalar_type(), acc = acc_dtype(dt);
  check_tensor(kBwd, "y", y, {d.T, d.B, d.H}, dt, x);
  check_tensor(kBwd, "gates", gates, {d.T, d.B, 4 * d.H}, acc, x);
  check_tensor(kBwd, "cs", cs, {d.T, d.B, d.H}, acc, x);
  check_tensor(kBwd, "dy", dy, {d.T, d.B, d.H}, dt, x);
  check_tensor(kBwd, "dhn", dhn, {d.B, d.H}, dt, x);
  check_tensor(kBwd, "dcn", dcn, {d.B, d.H}, dt, x);
  if (lengths) check_lengths_values(kBwd, *lengths, d.T);
  std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(acc, kBwd, [&] {
    out = lstm_bwd_kernel<scalar_t>(to_acc(x), to_acc(h0), to_acc(c0), to_acc(w_ih), to_acc(w_hh),
                                    to_acc(y), gates, cs, lengths_ptr(lengths), to_acc(dy),
                                    to_acc(dhn), to_acc(dcn));
  });
  auto& [dx, dh0, dc0, dw_ih, dw_hh, db] = out;
  return {from_acc(dx, dt),    from_acc(dh0, dt),   from_acc(dc0, dt),
          from_acc(dw_ih, dt), from_acc(dw_hh, dt), from_acc(db, dt)};
}

}  // namespace
}  // namespace fused_rnn::cpu

TORCH_LIBRARY_IMPL(fused_rnn, CPU, m) {
  m.impl("lstm_fwd", &fused_rnn::cpu::lstm_fwd);
  m.impl("lstm_bwd", &fused_rnn::cpu::lstm_bwd);
}
