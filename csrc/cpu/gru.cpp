// Fused GRU layer on the CPU: fused_rnn::gru_fwd and fused_rnn::gru_bwd.
//
// Dimension legend: T time steps, B batch, I input features, H hidden size; gates in torch's
// order r, z, n, so a (B, 3H) gate row is [r | z | n], H columns each, and
//   r = sigmoid(gi_r + gh_r), z = sigmoid(gi_z + gh_z), n = tanh(gi_n + r * gh_n),
//   h = (1 - z) * n + z * h_prev,   with gi = x W_ih^T + b_ih and gh = h_prev W_hh^T + b_hh.
//
// Threads own hidden units (for_each_step: one parallel region per sequence, a barrier after every
// step) and with them the matching columns of the three gate blocks; weights are packed once per
// call (PanelWeights, panel_gemm.h). The structure is the LSTM's (lstm.cpp):
// Forward: in each step a thread computes x_t W_ih^T and
// h_{t-1} W_hh^T for its columns into two (B, 3H) buffers (separate: b_hn and W_hn h sit inside
// r * (...)) and then the fused, vectorised pointwise update of its units, which adds the biases,
// saves r, z, n into gates[t] and gh_n (both needed by backward). The state alternates between
// two buffers. Nothing is allocated in the loop.
// Backward: in each reverse step, dh += dgh[t+1] W_hh for a thread's units,
// then the gradients of the gi and gh pre-activations of its units (dgh kept as dgi's r, z blocks
// plus its own n block). After the loop dx = dgi W_ih
// (chunked GEMM), dW_ih, dW_hh (BLAS GEMMs over all steps), db_ih, db_hh (sums).
// Per-sequence lengths: as for the LSTM, a padded step writes y = 0, freezes the state and has zero
// gradients, so its state gradient passes through unchanged.
#include <torch/library.h>

#include "../fused_rnn.h"
#include "cpu_common.h"
#include "panel_gemm.h"

namespace fused_rnn::cpu {
namespace {

using at::Tensor;

constexpr const char* kFwd = "fused_rnn::gru_fwd";
constexpr const char* kBwd = "fused_rnn::gru_bwd";

// All tensors contiguous, in scalar_t: x (T, B, I), h0 (B, H), w_ih (3H, I), w_hh (3H, H),
// b_ih / b_hh (3H,) or undefined. Returns y (T, B, H), hn (B, H), gates (T, B, 3H) and
// ghn (T, B, H) -- the last two empty unless need_saved.
template <typename scalar_t>
std::tuple<Tensor, Tensor, Tensor, Tensor> gru_fwd_kernel(
    const Tensor& x, const Tensor& h0, const Tensor& w_ih, const Tensor& w_hh,
    const Tensor& b_ih, const Tensor& b_hh, const int64_t* len, bool need_saved) {
  using Vec = Vectorized<scalar_t>;
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2), H = h0.size(1), G = 3 * H;

  // Per step: x_t W_ih^T and h_{t-1} W_hh^T into two (B, 3H) buffers that stay in cache (as in the
  // LSTM, the input projection is done step by step); both biases are added in the pointwise pass.
  const PanelWeights<scalar_t> w_x(w_ih, /*transposed=*/true, /*groups=*/3);  // x W_ih^T
  Tensor gi = at::empty({B, G}, x.options());
  // r, z, n of every step, for backward.
  Tensor gates = need_saved ? at::empty({T, B, G}, x.options()) : x.new_empty({0});
  scalar_t* gp = need_saved ? gates.data_ptr<scalar_t>() : nullptr;
  scalar_t* gip = gi.data_ptr<scalar_t>();
  const scalar_t* xp = x.data_ptr<scalar_t>();
  const scalar_t* bip = b_ih.defined() ? b_ih.data_ptr<scalar_t>() : nullptr;
  Tensor y = at::empty({T, B, H}, x.options());
  Tensor hbuf = at::empty({2, B, H}, x.options());  // h_{t-1} / h_t, alternating
  hbuf[0].copy_(h0);
  Tensor gh = at::empty({B, G}, x.options());  // h_{t-1} W_hh^T of the current step (no bias)
  Tensor ghn = need_saved ? at::empty({T, B, H}, x.options()) : x.new_empty({0});

  const PanelWeights<scalar_t> w_h(w_hh, /*transposed=*/true, /*groups=*/3);  // h W_hh^T
  const scalar_t* bhp = b_hh.defined() ? b_hh.data_ptr<scalar_t>() : nullptr;
  scalar_t* yp = y.data_ptr<scalar_t>();
  scalar_t* hbp = hbuf.data_ptr<scalar_t>();
  scalar_t* ghp = gh.data_ptr<scalar_t>();
  scalar_t* ghnp = need_saved ? ghn.data_ptr<scalar_t>() : nullptr;

  const int64_t step_flops = 2 * B * G * (I + H);
  for_each_step(T, /*reverse=*/false, H, step_flops, [&](int64_t t, int64_t u0, int64_t u1) {
    const scalar_t* h_prev = hbp + (t % 2) * B * H;
    scalar_t* h_next = hbp + ((t + 1) % 2) * B * H;
    w_x.run(xp + t * B * I, I, B, u0, u1, gip, G, false);
    w_h.run(h_prev, H, B, u0, u1, ghp, G, false);
    for (int64_t b = 0; b < B; ++b) {
      scalar_t* g = need_saved ? gp + (t * B + b) * G : nullptr;
      const scalar_t* gir = gip + b * G;
      scalar_t* yr = yp + (t * B + b) * H;
      const scalar_t* hp = h_prev + b * H;
      scalar_t* hn_row = h_next + b * H;
      const scalar_t* ghr = ghp + b * G;
      scalar_t* ghnr = need_saved ? ghnp + (t * B + b) * H : nullptr;
      if (!step_valid(len, b, t)) {  // padding: y = 0, state frozen
        zero_row(yr + u0, u1 - u0);
        std::copy(hp + u0, hp + u1, hn_row + u0);
        if (need_saved) {
          for (int64_t k = 0; k < 3; ++k) zero_row(g + k * H + u0, u1 - u0);
          zero_row(ghnr + u0, u1 - u0);
        }
        continue;
      }
      // gi + b_ih and gh + b_hh for the gate block starting at column `off`.
      auto gi_at = [&](int64_t off, int64_t n) {
        const Vec v = Vec::loadu(gir + off, n);
        return bip ? v + Vec::loadu(bip + off, n) : v;
      };
      auto gh_at = [&](int64_t off, int64_t n) {
        const Vec v = Vec::loadu(ghr + off, n);
        return bhp ? v + Vec::loadu(bhp + off, n) : v;
      };
      for_each_vec<scalar_t>(u0, u1, [&](int64_t j, int64_t n) {
        const Vec r = vsigmoid(gi_at(j, n) + gh_at(j, n));
        const Vec z = vsigmoid(gi_at(H + j, n) + gh_at(H + j, n));
        const Vec ghn_v = gh_at(2 * H + j, n);
        const Vec nn = vtanh(gi_at(2 * H + j, n) + r * ghn_v);
        const Vec h = nn + z * (Vec::loadu(hp + j, n) - nn);  // (1 - z) n + z h_prev
        h.store(hn_row + j, n);
        h.store(yr + j, n);
        if (need_saved) {
          r.store(g + j, n);
          z.store(g + H + j, n);
          nn.store(g + 2 * H + j, n);
          ghn_v.store(ghnr + j, n);
        }
      });
    }
  });
  return {y, hbuf[T % 2].clone(), gates, ghn};
}

// Tensors as in gru_fwd_kernel plus y (T, B, H), gates / ghn from it, dy (T, B, H), dhn (B, H).
// Returns dx (T, B, I), dh0 (B, H), dw_ih (3H, I), dw_hh (3H, H), db_ih, db_hh (3H,).
template <typename scalar_t>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> gru_bwd_kernel(
    const Tensor& x, const Tensor& h0, const Tensor& w_ih, const Tensor& w_hh, const Tensor& y,
    const Tensor& gates, const Tensor& ghn, const int64_t* len, const Tensor& dy,
    const Tensor& dhn) {
  using Vec = Vectorized<scalar_t>;
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2), H = h0.size(1), G = 3 * H;

  // Gradients of the pre-activations gi (input side) and gh (recurrent side). They differ only in
  // the n block, dgh_n = dgi_n * r, so dgh is not stored: its r, z blocks are read from dgi and
  // only dgh_n has a buffer of its own (a third of the memory and page faults of a full dgh).
  Tensor dgi = at::empty({T, B, G}, x.options());
  Tensor dghn = at::empty({T, B, H}, x.options());
  // As in the LSTM: valid rows replace dh with z * dh_t, then the next step's GEMM adds
  // dgh[t] W_hh; padded rows keep theirs. A thread touches only its own units of dh.
  Tensor dh = dhn.clone();
  // dgh W_hh = dgi[:, r|z] W_hh[r|z rows] + dgh_n W_hh[n rows]: two GEMMs into the same dh.
  const PanelWeights<scalar_t> w_rz(w_hh.narrow(0, 0, 2 * H), /*transposed=*/false, 1);
  const PanelWeights<scalar_t> w_n(w_hh.narrow(0, 2 * H, H), /*transposed=*/false, 1);
  scalar_t* dgip = dgi.data_ptr<scalar_t>();
  scalar_t* dghnp = dghn.data_ptr<scalar_t>();
  scalar_t* dhp = dh.data_ptr<scalar_t>();
  const scalar_t* gp = gates.data_ptr<scalar_t>();
  const scalar_t* ghnp = ghn.data_ptr<scalar_t>();
  const scalar_t* yp = y.data_ptr<scalar_t>();
  const scalar_t* h0p = h0.data_ptr<scalar_t>();
  const scalar_t* dyp = dy.data_ptr<scalar_t>();
  // dh (own units) += dgh[t] W_hh.
  auto recurrent = [&](int64_t t, int64_t u0, int64_t u1) {
    w_rz.run(dgip + t * B * G, G, B, u0, u1, dhp, H, true);
    w_n.run(dghnp + t * B * H, H, B, u0, u1, dhp, H, true);
  };

  for_each_step(T, /*reverse=*/true, H, 2 * B * G * H, [&](int64_t t, int64_t u0, int64_t u1) {
    // dh_t = z dh_{t+1} (left by the last step) + dgh[t+1] W_hh, for this thread's units.
    if (t + 1 < T) recurrent(t + 1, u0, u1);
    for (int64_t b = 0; b < B; ++b) {
      scalar_t* dgir = dgip + (t * B + b) * G;
      scalar_t* dghnr = dghnp + (t * B + b) * H;
      if (!step_valid(len, b, t)) {
        for (int64_t k = 0; k < 3; ++k) zero_row(dgir + k * H + u0, u1 - u0);
        zero_row(dghnr + u0, u1 - u0);
        continue;
      }
      const scalar_t* g = gp + (t * B + b) * G;
      const scalar_t* ghnr = ghnp + (t * B + b) * H;
      const scalar_t* hprev = t == 0 ? h0p + b * H : yp + ((t - 1) * B + b) * H;
      const scalar_t* dyr = dyp + (t * B + b) * H;
      scalar_t* dhr = dhp + b * H;
      const Vec one(scalar_t(1));
      for_each_vec<scalar_t>(u0, u1, [&](int64_t j, int64_t n) {
        const Vec r = Vec::loadu(g + j, n);
        const Vec z = Vec::loadu(g + H + j, n);
        const Vec nn = Vec::loadu(g + 2 * H + j, n);
        const Vec dht = Vec::loadu(dyr + j, n) + Vec::loadu(dhr + j, n);
        const Vec dn = dht * (one - z) * (one - nn * nn);  // through tanh
        const Vec dz = dht * (Vec::loadu(hprev + j, n) - nn) * z * (one - z);
        const Vec dr = dn * Vec::loadu(ghnr + j, n) * r * (one - r);
        dr.store(dgir + j, n);
        dz.store(dgir + H + j, n);
        dn.store(dgir + 2 * H + j, n);
        (dn * r).store(dghnr + j, n);
        (dht * z).store(dhr + j, n);
      });
    }
  });
  for_each_chunk(H, 2 * B * G * H, [&](int64_t u0, int64_t u1) {
    recurrent(0, u0, u1);  // dh0 = z dh_0 + dgh[0] W_hh
  });

  const Tensor dgi2d = dgi.view({T * B, G});
  Tensor dx = at::empty({T, B, I}, x.options());
  {
    const PanelWeights<scalar_t> w_x(w_ih, /*transposed=*/false, /*groups=*/1);  // dgi W_ih
    scalar_t* dxp = dx.data_ptr<scalar_t>();
    for_each_chunk(I, 2 * T * B * G * I, [&](int64_t n0, int64_t n1) {
      w_x.run(dgip, G, T * B, n0, n1, dxp, I, false);
    });
  }
  Tensor dw_ih = at::mm(dgi2d.t(), x.view({T * B, I}));
  // d (T, B, n) -> d^T h_prev (n, H): h_{t-1} is h0 for t = 0 and y[t-1] after it (padded steps
  // have dgh = 0, so their y is unused).
  auto times_h_prev = [&](const Tensor& d) {
    const int64_t n = d.size(2);
    Tensor out = at::mm(d[0].t(), h0);
    if (T > 1) {
      out.addmm_(d.narrow(0, 1, T - 1).view({(T - 1) * B, n}).t(),
                 y.narrow(0, 0, T - 1).view({(T - 1) * B, H}));
    }
    return out;
  };
  const Tensor dg_rz = dgi.narrow(2, 0, 2 * H);  // = dgh[:, :, r|z]
  Tensor dw_hh = at::cat({times_h_prev(dg_rz), times_h_prev(dghn)});
  Tensor db_hh = at::cat({dg_rz.view({T * B, 2 * H}).sum(0), dghn.view({T * B, H}).sum(0)});
  return {dx, dh, dw_ih, dw_hh, dgi2d.sum(0), db_hh};
}

}  // namespace

// Op entry points: registered, behind the CPU check, by dispatch.cpp (a baseline-ISA TU).
std::tuple<Tensor, Tensor, Tensor, Tensor> gru_fwd(
    const Tensor& x, const Tensor& h0, const Tensor& w_ih, const Tensor& w_hh,
    const std::optional<Tensor>& b_ih, const std::optional<Tensor>& b_hh,
    const std::optional<Tensor>& lengths, bool need_saved) {
  check_isa(kFwd);
  const Dims d = check_inputs(kFwd, 3, x, h0, nullptr, w_ih, w_hh, b_ih, b_hh, lengths);
  if (lengths) check_lengths_values(kFwd, *lengths, d.T);
  const auto dt = x.scalar_type();
  const Tensor xa = to_acc(x);
  std::tuple<Tensor, Tensor, Tensor, Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(xa.scalar_type(), kFwd, [&] {
    out = gru_fwd_kernel<scalar_t>(xa, to_acc(h0), to_acc(w_ih), to_acc(w_hh),
                                   b_ih ? to_acc(*b_ih) : Tensor(), b_hh ? to_acc(*b_hh) : Tensor(),
                                   lengths_ptr(lengths), need_saved);
  });
  auto& [y, hn, gates, ghn] = out;
  return {from_acc(y, dt), from_acc(hn, dt), gates, ghn};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> gru_bwd(
    const Tensor& x, const Tensor& h0, const Tensor& w_ih, const Tensor& w_hh, const Tensor& y,
    const Tensor& gates, const Tensor& ghn, const std::optional<Tensor>& lengths, const Tensor& dy,
    const Tensor& dhn) {
  check_isa(kBwd);
  const Dims d = check_inputs(kBwd, 3, x, h0, nullptr, w_ih, w_hh, std::nullopt, std::nullopt,
                              lengths);
  const auto dt = x.scalar_type(), acc = acc_dtype(dt);
  check_tensor(kBwd, "y", y, {d.T, d.B, d.H}, dt, x);
  check_tensor(kBwd, "gates", gates, {d.T, d.B, 3 * d.H}, acc, x);
  check_tensor(kBwd, "ghn", ghn, {d.T, d.B, d.H}, acc, x);
  check_tensor(kBwd, "dy", dy, {d.T, d.B, d.H}, dt, x);
  check_tensor(kBwd, "dhn", dhn, {d.B, d.H}, dt, x);
  if (lengths) check_lengths_values(kBwd, *lengths, d.T);
  std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(acc, kBwd, [&] {
    out = gru_bwd_kernel<scalar_t>(to_acc(x), to_acc(h0), to_acc(w_ih), to_acc(w_hh), to_acc(y),
                                   gates, ghn, lengths_ptr(lengths), to_acc(dy), to_acc(dhn));
  });
  auto& [dx, dh0, dw_ih, dw_hh, db_ih, db_hh] = out;
  return {from_acc(dx, dt),    from_acc(dh0, dt),   from_acc(dw_ih, dt),
          from_acc(dw_hh, dt), from_acc(db_ih, dt), from_acc(db_hh, dt)};
}

}  // namespace fused_rnn::cpu
