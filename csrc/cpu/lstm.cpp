// Fused LSTM layer on the CPU: fused_rnn::lstm_fwd and fused_rnn::lstm_bwd.
//
// Dimension legend: T time steps, B batch, I input features, H hidden size; gates in torch's
// order i, f, g, o, so a (B, 4H) gate row is [i | f | g | o], H columns each.
//
// Threads own hidden units: for_each_step gives each thread a contiguous range [u0, u1) of units,
// and with it the columns u0..u1 of all four gate blocks, for the whole sequence (one parallel
// region, a barrier after every step). The weights are packed once per call (PanelWeights,
// panel_gemm.h).
// Forward: in each step a thread computes x_t W_ih^T + h_{t-1} W_hh^T
// for its columns into a small (B, 4H) buffer that stays in cache, and then runs the fused,
// vectorised pointwise update of its units for every batch row (+ b_ih + b_hh; i, f, g, o, saved
// into gates[t] for backward; c_t, h_t). The input projection is done per step rather than as one
// (T*B, I) x (I, 4H) GEMM before the loop: the register kernel is as fast at 64 rows as at 6400,
// and a (T, B, 4H) pre-activation buffer (67 MB at the IMDB shape) would leave the cache between
// the two passes and be page-faulted in afresh on every call (measured: 262 -> 238 ms, 2 threads).
// h_{t-1} is read whole by every thread while h_t is written, so the state alternates between two
// buffers. Nothing is allocated inside the time loop.
// Backward: in each reverse step a thread adds dG[t+1] W_hh into its units
// of the running dh and then computes the gate gradients dG[t] of its units. After the loop,
// dx = dG W_ih (the same chunked GEMM over input features), dW_ih, dW_hh (BLAS GEMMs over all
// steps) and db (one sum).
// Per-sequence lengths: a row whose step t is padding (t >= lengths[b]) writes y = 0, keeps its
// state, and gets zero gate gradients, so its state gradient passes through unchanged.
#include <torch/library.h>

#include "../fused_rnn.h"
#include "cpu_common.h"
#include "panel_gemm.h"

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

  const PanelWeights<scalar_t> w_x(w_ih, /*transposed=*/true, /*groups=*/4);  // x W_ih^T
  const PanelWeights<scalar_t> w_h(w_hh, /*transposed=*/true, /*groups=*/4);  // h W_hh^T
  const scalar_t* bp = bias.defined() ? bias.data_ptr<scalar_t>() : nullptr;
  // Gate activations i, f, g, o of every step, for backward.
  Tensor gates = need_saved ? at::empty({T, B, G}, x.options()) : x.new_empty({0});
  Tensor y = at::empty({T, B, H}, x.options());
  Tensor hbuf = at::empty({2, B, H}, x.options());  // h_{t-1} / h_t, alternating
  hbuf[0].copy_(h0);
  Tensor pre = at::empty({B, G}, x.options());  // x_t W_ih^T + h_{t-1} W_hh^T of the current step
  // The cell state lives in cs[t] when it is saved, else in one (B, H) buffer updated in place
  // (each thread touches only its own units).
  Tensor cs = need_saved ? at::empty({T, B, H}, x.options()) : c0.clone();

  scalar_t* yp = y.data_ptr<scalar_t>();
  scalar_t* hbp = hbuf.data_ptr<scalar_t>();
  scalar_t* prp = pre.data_ptr<scalar_t>();
  scalar_t* gp = need_saved ? gates.data_ptr<scalar_t>() : nullptr;
  const scalar_t* xp = x.data_ptr<scalar_t>();
  scalar_t* csp = cs.data_ptr<scalar_t>();
  const scalar_t* c0p = c0.data_ptr<scalar_t>();

  const int64_t step_flops = 2 * B * G * (I + H);
  for_each_step(T, /*reverse=*/false, H, step_flops, [&](int64_t t, int64_t u0, int64_t u1) {
    const scalar_t* h_prev = hbp + (t % 2) * B * H;
    scalar_t* h_next = hbp + ((t + 1) % 2) * B * H;
    const scalar_t* c_prev = !need_saved ? csp : (t == 0 ? c0p : csp + (t - 1) * B * H);
    scalar_t* c_out = need_saved ? csp + t * B * H : csp;
    const scalar_t* xt = xp + t * B * I;
    w_x.run(xt, I, B, u0, u1, prp, G, false);
    w_h.run(h_prev, H, B, u0, u1, prp, G, true);
    for (int64_t b = 0; b < B; ++b) {
      scalar_t* g = need_saved ? gp + (t * B + b) * G : nullptr;
      const scalar_t* pr = prp + b * G;
      scalar_t* yr = yp + (t * B + b) * H;
      const scalar_t* cp = c_prev + b * H;
      scalar_t* c = c_out + b * H;
      const scalar_t* hp = h_prev + b * H;
      scalar_t* hn = h_next + b * H;
      if (!step_valid(len, b, t)) {  // padding: y = 0, state frozen
        zero_row(yr + u0, u1 - u0);
        std::copy(hp + u0, hp + u1, hn + u0);
        if (need_saved) {
          for (int64_t k = 0; k < 4; ++k) zero_row(g + k * H + u0, u1 - u0);
          std::copy(cp + u0, cp + u1, c + u0);
        }
        continue;
      }
      // Pre-activation (with b_ih + b_hh) of the gate block starting at column `off`.
      auto pre_at = [&](int64_t off, int64_t n) {
        const Vec v = Vec::loadu(pr + off, n);
        return bp ? v + Vec::loadu(bp + off, n) : v;
      };
      for_each_vec<scalar_t>(u0, u1, [&](int64_t j, int64_t n) {
        const Vec i = vsigmoid(pre_at(j, n));
        const Vec f = vsigmoid(pre_at(H + j, n));
        const Vec gg = vtanh(pre_at(2 * H + j, n));
        const Vec o = vsigmoid(pre_at(3 * H + j, n));
        const Vec cn = f * Vec::loadu(cp + j, n) + i * gg;
        const Vec h = o * vtanh(cn);
        cn.store(c + j, n);
        h.store(hn + j, n);
        h.store(yr + j, n);
        if (need_saved) {
          i.store(g + j, n);
          f.store(g + H + j, n);
          gg.store(g + 2 * H + j, n);
          o.store(g + 3 * H + j, n);
        }
      });
    }
  });
  Tensor hn = hbuf[T % 2].clone();
  if (!need_saved) return {y, hn, cs, gates, x.new_empty({0})};
  // Frozen rows copied their state forward, so cs[T-1] is every row's final cell state.
  return {y, hn, cs.select(0, T - 1).clone(), gates, cs};
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
  // dh holds the gradient flowing into h_t from later steps; valid rows consume it and reset it
  // to 0 so that the next step's GEMM (accumulating) leaves dG[t] W_hh there, while padded rows
  // keep theirs. dc is updated in place the same way. A thread touches only its own units of both.
  Tensor dh = dhn.clone();
  Tensor dc = dcn.clone();
  const PanelWeights<scalar_t> w_h(w_hh, /*transposed=*/false, /*groups=*/1);  // dG W_hh
  scalar_t* dgp = dgates.data_ptr<scalar_t>();
  scalar_t* dhp = dh.data_ptr<scalar_t>();
  scalar_t* dcp = dc.data_ptr<scalar_t>();
  const scalar_t* gp = gates.data_ptr<scalar_t>();
  const scalar_t* csp = cs.data_ptr<scalar_t>();
  const scalar_t* c0p = c0.data_ptr<scalar_t>();
  const scalar_t* dyp = dy.data_ptr<scalar_t>();

  for_each_step(T, /*reverse=*/true, H, 2 * B * G * H, [&](int64_t t, int64_t u0, int64_t u1) {
    // dh_t += dG[t+1] W_hh (its own units; dG[t+1] was completed by every thread last step).
    if (t + 1 < T) w_h.run(dgp + (t + 1) * B * G, G, B, u0, u1, dhp, H, true);
    for (int64_t b = 0; b < B; ++b) {
      scalar_t* dg = dgp + (t * B + b) * G;
      if (!step_valid(len, b, t)) {
        for (int64_t k = 0; k < 4; ++k) zero_row(dg + k * H + u0, u1 - u0);
        continue;
      }
      const scalar_t* g = gp + (t * B + b) * G;
      const scalar_t* c = csp + (t * B + b) * H;
      const scalar_t* cp = t == 0 ? c0p + b * H : csp + ((t - 1) * B + b) * H;
      const scalar_t* dyr = dyp + (t * B + b) * H;
      scalar_t* dhr = dhp + b * H;
      scalar_t* dcr = dcp + b * H;
      const Vec one(scalar_t(1));
      for_each_vec<scalar_t>(u0, u1, [&](int64_t j, int64_t n) {
        const Vec i = Vec::loadu(g + j, n);
        const Vec f = Vec::loadu(g + H + j, n);
        const Vec gg = Vec::loadu(g + 2 * H + j, n);
        const Vec o = Vec::loadu(g + 3 * H + j, n);
        const Vec tc = vtanh(Vec::loadu(c + j, n));
        const Vec dht = Vec::loadu(dyr + j, n) + Vec::loadu(dhr + j, n);
        const Vec dct = Vec::loadu(dcr + j, n) + dht * o * (one - tc * tc);
        (dct * gg * i * (one - i)).store(dg + j, n);
        (dct * Vec::loadu(cp + j, n) * f * (one - f)).store(dg + H + j, n);
        (dct * i * (one - gg * gg)).store(dg + 2 * H + j, n);
        (dht * tc * o * (one - o)).store(dg + 3 * H + j, n);
        (dct * f).store(dcr + j, n);
        Vec(scalar_t(0)).store(dhr + j, n);
      });
    }
  });
  for_each_chunk(H, 2 * B * G * H, [&](int64_t u0, int64_t u1) {
    w_h.run(dgp, G, B, u0, u1, dhp, H, true);  // dh0 += dG[0] W_hh
  });

  const Tensor dg2d = dgates.view({T * B, G});
  Tensor dx = at::empty({T, B, I}, x.options());
  {
    const PanelWeights<scalar_t> w_x(w_ih, /*transposed=*/false, /*groups=*/1);  // dG W_ih
    scalar_t* dxp = dx.data_ptr<scalar_t>();
    for_each_chunk(I, 2 * T * B * G * I, [&](int64_t n0, int64_t n1) {
      w_x.run(dgp, G, T * B, n0, n1, dxp, I, false);
    });
  }
  Tensor dw_ih = at::mm(dg2d.t(), x.view({T * B, I}));
  // h_{t-1} is h0 for t = 0 and y[t-1] after it (padded steps have dG = 0, so their y is unused).
  Tensor dw_hh = at::mm(dgates[0].t(), h0);
  if (T > 1) {
    dw_hh.addmm_(dgates.narrow(0, 1, T - 1).view({(T - 1) * B, G}).t(),
                 y.narrow(0, 0, T - 1).view({(T - 1) * B, H}));
  }
  Tensor db = dg2d.sum(0);
  return {dx, dh, dc, dw_ih, dw_hh, db};
}

}  // namespace

// Op entry points: registered, behind the CPU check, by dispatch.cpp (a baseline-ISA TU).
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

}  // namespace fused_rnn::cpu
