// CUDA implementation of the fused_rnn ops (schemas: csrc/ops.cpp): tensors -> the torch-free
// launchers of launchers.h; every GEMM goes through ATen (cuBLAS on CUDA).
//
// Forward: the input projection of all T steps is one GEMM. Then either the persistent kernel
// (persistent.cu: all steps in one cooperative launch) or, when that cannot run, the general
// path: per step one recurrent GEMM + one fused pointwise kernel (pointwise.cu).
// Backward: per step, in reverse time, one fused pointwise kernel + one GEMM for the gradient
// w.r.t. h_{t-1} (or, opt-in, the persistent backward kernel for all steps); then dx, dW_ih,
// dW_hh and the bias gradients are single GEMMs / reductions over all steps.
//
// Precision: states, saved activations and all GEMM outputs are in the acc dtype (float for
// fp16 / bf16 / fp32 inputs, double for fp64). fp16 / bf16 input projections use cuBLAS with
// fp32 output (at::mm out_dtype); the other GEMMs run on acc copies of their operands.
//
// Path choice: env FUSED_RNN_CUDA_PATH = auto (default) | general | persistent picks the forward;
// "persistent" raises instead of falling back, so tests can tell which path ran.
// FUSED_RNN_CUDA_MMA=1 puts the persistent forward's matvec on tensor cores (fp16 / bf16), and
// FUSED_RNN_CUDA_BWD=persistent runs the persistent backward (persistent_bwd.cu); both opt-in
// until they have passed on a GPU.
//
// FUSED_RNN_CUDA_EMULATE (tests only): builds this file with the CPU torch, no CUDA: the
// launchers come from emulation/host_launchers.cpp (the same element functions run on the host),
// the persistent path is left out and the ops register as fused_rnn_cuda_emu::* on CPU.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstdlib>
#include <optional>
#include <string>
#include <tuple>

#ifndef FUSED_RNN_CUDA_EMULATE
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#endif

#include "../fused_rnn.h"
#include "launchers.h"

namespace fused_rnn {
namespace cuda_ops {
namespace {

using at::Tensor;
using cuda::DType;
using OptTensor = std::optional<Tensor>;

DType io_code(at::ScalarType s) {
  switch (s) {
    case at::kFloat:
      return DType::kF32;
    case at::kDouble:
      return DType::kF64;
    case at::kHalf:
      return DType::kF16;
    case at::kBFloat16:
      return DType::kBF16;
    default:
      TORCH_CHECK(false, "fused_rnn (cuda): unsupported dtype ", s,
                  "; expected float32, float64, float16 or bfloat16");
  }
  return DType::kF32;  // unreachable: TORCH_CHECK(false) throws
}

// The shared argument checks (csrc/ops.cpp) plus the device. Returns the sizes.
Dims check_common(const char* op, int64_t G, const Tensor& x, const Tensor& h0, const Tensor* c0,
                  const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih,
                  const OptTensor& b_hh, const OptTensor& lengths) {
#ifdef FUSED_RNN_CUDA_EMULATE
  TORCH_CHECK(x.device().is_cpu(), op, " (cuda emulation): x must be on the CPU");
#else
  TORCH_CHECK(x.is_cuda(), op, " (cuda): x must be a CUDA tensor, got ", x.device());
#endif
  // Lengths values are not read back (that would sync the device); out-of-range values cannot
  // cause an out-of-bounds access, as a kernel only compares t < lengths[b].
  return check_inputs(op, G, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths);
}

const int64_t* lengths_ptr(const OptTensor& lengths) {
  return lengths.has_value() && lengths->defined() ? lengths->data_ptr<int64_t>() : nullptr;
}

void* stream_of(const Tensor& x) {
#ifdef FUSED_RNN_CUDA_EMULATE
  (void)x;
  return nullptr;
#else
  return static_cast<void*>(at::cuda::getCurrentCUDAStream(x.device().index()).stream());
#endif
}

void check_launch(const std::string& err, const char* what) {
  TORCH_CHECK(err.empty(), "fused_rnn (cuda): ", what, " kernel failed: ", err);
}

// Pointer to slice t of a contiguous (T, ...) tensor, without creating a view per step.
void* at_step(const Tensor& t, int64_t step) {
  return static_cast<char*>(t.data_ptr()) + step * t.stride(0) * t.element_size();
}

// a @ b in the acc dtype. fp16 / bf16 operands: cuBLAS with fp32 output (exact products,
// fp32 accumulation) instead of converting both operands to float first.
Tensor mm_acc(const Tensor& a, const Tensor& b) {
  const auto s = a.scalar_type();
  if (s == at::kHalf || s == at::kBFloat16) return at::mm(a, b, at::kFloat);
  return at::mm(a, b);
}

// x (T, B, I) -> x W_ih^T + sum of the given biases, (T, B, G*H) in acc.
Tensor input_projection(const Tensor& x, const Tensor& w_ih, const OptTensor& b1,
                        const OptTensor& b2) {
  const auto acc = acc_dtype(x.scalar_type());
  Tensor xp = mm_acc(x.view({x.size(0) * x.size(1), x.size(2)}), w_ih.t());
  if (b1) xp.add_(b1->to(acc));
  if (b2) xp.add_(b2->to(acc));
  return xp.view({x.size(0), x.size(1), w_ih.size(0)});
}

enum class PathChoice { kAuto, kGeneral, kPersistent };

PathChoice path_choice() {
  const char* v = std::getenv("FUSED_RNN_CUDA_PATH");
  const std::string s = v == nullptr ? "" : v;
  if (s.empty() || s == "auto") return PathChoice::kAuto;
  if (s == "general") return PathChoice::kGeneral;
  if (s == "persistent") return PathChoice::kPersistent;
  TORCH_CHECK(false, "FUSED_RNN_CUDA_PATH must be auto, general or persistent, got '", s, "'");
  return PathChoice::kAuto;  // unreachable: TORCH_CHECK(false) throws
}

// FUSED_RNN_CUDA_MMA=1: the persistent kernel's recurrent matvec runs on tensor cores for fp16 /
// bf16 (h rounded to the io dtype for the product, as cuDNN does). Off by default until it has
// passed the GPU tests (tests/test_cuda_compile.py, scripts/gpu_check.sh).
bool tensor_cores_requested() {
  const char* v = std::getenv("FUSED_RNN_CUDA_MMA");
  return v != nullptr && std::string(v) == "1";
}

// Arguments of the persistent kernel; c0 / cn are null and b_hh undefined for LSTM as needed.
cuda::PersistentFwd persistent_args(cuda::Cell cell, const Tensor& x, const Tensor& xp,
                                    const Tensor& w_hh, const Tensor& b_hh_acc, const Tensor& h0,
                                    const Tensor* c0, const OptTensor& lengths, Tensor& y,
                                    Tensor& hn, Tensor* cn, Tensor& gates, Tensor& saved2,
                                    bool need_saved) {
  cuda::PersistentFwd p{};
  p.cell = cell;
  p.io = io_code(x.scalar_type());
  p.T = static_cast<int>(x.size(0));
  p.B = static_cast<int>(x.size(1));
  p.H = static_cast<int>(w_hh.size(1));
  p.xp = xp.data_ptr<float>();
  p.w_hh = w_hh.data_ptr();
  p.b_hh = b_hh_acc.defined() ? b_hh_acc.data_ptr<float>() : nullptr;
  p.h0 = h0.data_ptr();
  p.c0 = c0 != nullptr ? c0->data_ptr() : nullptr;
  p.lengths = lengths_ptr(lengths);
  p.y = y.data_ptr();
  p.hn = hn.data_ptr();
  p.cn = cn != nullptr ? cn->data_ptr() : nullptr;
  p.gates = need_saved ? gates.data_ptr<float>() : nullptr;
  p.saved2 = need_saved ? saved2.data_ptr<float>() : nullptr;
  p.tensor_cores = tensor_cores_requested();
  return p;
}

// Tries the persistent forward kernel. True when it ran (outputs written), false when the
// general path must run instead.
bool try_persistent(cuda::PersistentFwd p, const Tensor& x) {
  const PathChoice choice = path_choice();
  if (choice == PathChoice::kGeneral) return false;
#ifdef FUSED_RNN_CUDA_EMULATE
  TORCH_CHECK(choice != PathChoice::kPersistent,
              "fused_rnn (cuda emulation): the persistent path is not emulated");
  (void)p;
  (void)x;
  return false;
#else
  if (p.io == DType::kF64) {
    TORCH_CHECK(choice != PathChoice::kPersistent,
                "fused_rnn (cuda): FUSED_RNN_CUDA_PATH=persistent, but fp64 has no persistent path");
    return false;
  }
  Tensor hbuf = at::empty({2, p.B, p.H}, x.options().dtype(at::kFloat));
  p.hbuf = hbuf.data_ptr<float>();
  const cuda::LaunchResult r =
      cuda::launch_persistent_fwd(p, static_cast<int>(x.device().index()), stream_of(x));
  TORCH_CHECK(r.status != cuda::Status::kError, "fused_rnn (cuda): persistent kernel failed: ",
              r.message);
  if (r.status == cuda::Status::kOk) return true;
  TORCH_CHECK(choice != PathChoice::kPersistent,
              "fused_rnn (cuda): FUSED_RNN_CUDA_PATH=persistent, but the persistent path cannot "
              "run this case: ",
              r.message);
  return false;
#endif
}

// FUSED_RNN_CUDA_BWD = general (default) | persistent. The persistent backward is opt-in until
// it has passed the GPU tests; when asked for, a case it cannot run raises.
bool persistent_bwd_requested(at::ScalarType io) {
  const char* v = std::getenv("FUSED_RNN_CUDA_BWD");
  const std::string s = v == nullptr ? "" : v;
  if (s.empty() || s == "general") return false;
  TORCH_CHECK(s == "persistent", "FUSED_RNN_CUDA_BWD must be general or persistent, got '", s,
              "'");
#ifdef FUSED_RNN_CUDA_EMULATE
  TORCH_CHECK(false, "fused_rnn (cuda emulation): the persistent backward is not emulated");
#endif
  TORCH_CHECK(io != at::kDouble,
              "fused_rnn (cuda): FUSED_RNN_CUDA_BWD=persistent, but fp64 has no persistent path");
  return true;
}

// Arguments of the persistent backward shared by both cells (the caller sets the cell-specific
// ones). dgh (T, B, G*H) and dh (B, H) are float outputs.
cuda::PersistentBwd persistent_bwd_args(cuda::Cell cell, const Tensor& x, const Tensor& w_hh,
                                        const Tensor& gates, const Tensor& saved2,
                                        const Tensor& dy, const Tensor& dhn,
                                        const OptTensor& lengths, Tensor& dgh, Tensor& dh) {
  cuda::PersistentBwd p{};
  p.cell = cell;
  p.io = io_code(x.scalar_type());
  p.T = static_cast<int>(x.size(0));
  p.B = static_cast<int>(x.size(1));
  p.H = static_cast<int>(w_hh.size(1));
  p.w_hh = w_hh.data_ptr();
  p.gates = gates.data_ptr<float>();
  p.saved2 = saved2.data_ptr<float>();
  p.dy = dy.data_ptr();
  p.dhn = dhn.data_ptr();
  p.lengths = lengths_ptr(lengths);
  p.dgh = dgh.data_ptr<float>();
  p.dh0 = dh.data_ptr<float>();
  return p;
}

void run_persistent_bwd(const cuda::PersistentBwd& p, const Tensor& x) {
#ifdef FUSED_RNN_CUDA_EMULATE
  (void)p;
  (void)x;
#else
  const cuda::LaunchResult r =
      cuda::launch_persistent_bwd(p, static_cast<int>(x.device().index()), stream_of(x));
  TORCH_CHECK(r.status == cuda::Status::kOk, "fused_rnn (cuda): persistent backward ",
              r.status == cuda::Status::kError ? "failed: " : "cannot run this case: ", r.message);
#endif
}

Tensor saved_or_empty(bool need, at::IntArrayRef sizes, const Tensor& x) {
  const auto opts = x.options().dtype(acc_dtype(x.scalar_type()));
  return need ? at::empty(sizes, opts) : at::empty({0}, opts);
}

#ifdef FUSED_RNN_CUDA_EMULATE
struct DeviceGuard {
  explicit DeviceGuard(at::Device) {}
};
#else
using DeviceGuard = c10::cuda::CUDAGuard;
#endif

}  // namespace

// ---------------------------------------------------------------------------------------------
// LSTM
// ---------------------------------------------------------------------------------------------

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_fwd(
    const Tensor& x, const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
    const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& lengths, bool need_saved) {
  const Dims d =
      check_common("fused_rnn::lstm_fwd", 4, x, h0, &c0, w_ih, w_hh, b_ih, b_hh, lengths);
  const int64_t T = d.T, B = d.B, H = d.H;
  DeviceGuard guard(x.device());
  at::NoGradGuard no_grad;  // internals are not differentiated; gradients come from lstm_bwd
  const auto io = x.scalar_type();
  const auto acc = acc_dtype(io);

  const Tensor xp = input_projection(x, w_ih, b_ih, b_hh);  // (T, B, 4H) acc
  Tensor y = at::empty({T, B, H}, x.options());
  Tensor gates = saved_or_empty(need_saved, {T, B, 4 * H}, x);
  Tensor cs = saved_or_empty(need_saved, {T, B, H}, x);

  if (acc == at::kFloat) {
    Tensor hn = at::empty({B, H}, x.options());
    Tensor cn = at::empty({B, H}, x.options());
    const auto p = persistent_args(cuda::Cell::kLstm, x, xp, w_hh, Tensor(), h0, &c0, lengths, y,
                                   hn, &cn, gates, cs, need_saved);
    if (try_persistent(p, x)) return {y, hn, cn, gates, cs};
  }

  // General path.
  const Tensor w_hh_t = w_hh.to(acc).t();  // (H, 4H) view
  Tensor h = h0.to(acc, /*non_blocking=*/false, /*copy=*/true);
  Tensor c = c0.to(acc, /*non_blocking=*/false, /*copy=*/true);
  Tensor pre = at::empty({B, 4 * H}, x.options().dtype(acc));
  void* stream = stream_of(x);
  cuda::LstmFwdStep p{};
  p.io = io_code(io);
  p.B = static_cast<int>(B);
  p.H = static_cast<int>(H);
  p.pre = pre.data_ptr();
  p.h = h.data_ptr();
  p.c = c.data_ptr();
  p.lengths = lengths_ptr(lengths);
  for (int64_t t = 0; t < T; ++t) {
    // pre = h_{t-1} W_hh^T; the kernel adds xp[t] (one launch fewer than addmm's copy + GEMM).
    at::mm_out(pre, h, w_hh_t);
    p.t = static_cast<int>(t);
    p.xp_t = at_step(xp, t);
    p.y_t = at_step(y, t);
    p.gates_t = need_saved ? at_step(gates, t) : nullptr;
    p.cs_t = need_saved ? at_step(cs, t) : nullptr;
    check_launch(cuda::launch_lstm_fwd_step(p, stream), "lstm forward step");
  }
  return {y, h.to(io), c.to(io), gates, cs};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_bwd(
    const Tensor& x, const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
    const Tensor& y, const Tensor& gates, const Tensor& cs, const OptTensor& lengths,
    const Tensor& dy, const Tensor& dhn, const Tensor& dcn) {
  const char* op = "fused_rnn::lstm_bwd";
  const Dims d = check_common(op, 4, x, h0, &c0, w_ih, w_hh, std::nullopt, std::nullopt, lengths);
  const int64_t T = d.T, B = d.B, I = d.I, H = d.H;
  const auto io = x.scalar_type();
  const auto acc = acc_dtype(io);
  TORCH_CHECK(gates.numel() != 0, op,
              ": the saved gates are empty; run lstm_fwd with need_saved=True");
  check_tensor(op, "y", y, {T, B, H}, io, x);
  check_tensor(op, "gates", gates, {T, B, 4 * H}, acc, x);
  check_tensor(op, "cs", cs, {T, B, H}, acc, x);
  check_tensor(op, "dy", dy, {T, B, H}, io, x);
  check_tensor(op, "dhn", dhn, {B, H}, io, x);
  check_tensor(op, "dcn", dcn, {B, H}, io, x);
  DeviceGuard guard(x.device());
  at::NoGradGuard no_grad;

  const Tensor c0_a = c0.to(acc).contiguous();
  Tensor dh = dhn.to(acc, /*non_blocking=*/false, /*copy=*/true);
  Tensor dc = dcn.to(acc, /*non_blocking=*/false, /*copy=*/true);
  Tensor dpre = at::empty({T, B, 4 * H}, x.options().dtype(acc));
  if (persistent_bwd_requested(io)) {
    cuda::PersistentBwd pb =
        persistent_bwd_args(cuda::Cell::kLstm, x, w_hh, gates, cs, dy, dhn, lengths, dpre, dh);
    pb.c0 = c0_a.data_ptr<float>();
    pb.dcn = dcn.data_ptr();
    pb.dc0 = dc.data_ptr<float>();
    run_persistent_bwd(pb, x);
  } else {
    const Tensor w_hh_a = w_hh.to(acc);  // (4H, H)
    void* stream = stream_of(x);
    cuda::LstmBwdStep p{};
    p.io = io_code(io);
    p.B = static_cast<int>(B);
    p.H = static_cast<int>(H);
    p.dh = dh.data_ptr();
    p.dc = dc.data_ptr();
    p.lengths = lengths_ptr(lengths);
    for (int64_t t = T - 1; t >= 0; --t) {
      p.t = static_cast<int>(t);
      p.gates_t = at_step(gates, t);
      p.cs_t = at_step(cs, t);
      p.c_prev = t > 0 ? at_step(cs, t - 1) : c0_a.data_ptr();
      p.dy_t = at_step(dy, t);
      p.dpre_t = at_step(dpre, t);
      check_launch(cuda::launch_lstm_bwd_step(p, stream), "lstm backward step");
      dh.addmm_(dpre.select(0, t), w_hh_a);  // dL/dh_{t-1} += dpre_t W_hh
    }
  }

  const Tensor dpre2 = dpre.view({T * B, 4 * H});
  const Tensor x2 = x.view({T * B, I}).to(acc);
  const Tensor h_prev = at::cat({h0.unsqueeze(0), y.slice(0, 0, T - 1)}, 0).to(acc);
  const Tensor dx = at::mm(dpre2, w_ih.to(acc)).view({T, B, I}).to(io);
  const Tensor dw_ih = at::mm(dpre2.t(), x2).to(io);
  const Tensor dw_hh = at::mm(dpre2.t(), h_prev.view({T * B, H})).to(io);
  const Tensor db = dpre2.sum(0).to(io);
  return {dx, dh.to(io), dc.to(io), dw_ih, dw_hh, db};
}

// ---------------------------------------------------------------------------------------------
// GRU
// ---------------------------------------------------------------------------------------------

std::tuple<Tensor, Tensor, Tensor, Tensor> gru_fwd(const Tensor& x, const Tensor& h0,
                                                    const Tensor& w_ih, const Tensor& w_hh,
                                                    const OptTensor& b_ih, const OptTensor& b_hh,
                                                    const OptTensor& lengths, bool need_saved) {
  const Dims d =
      check_common("fused_rnn::gru_fwd", 3, x, h0, nullptr, w_ih, w_hh, b_ih, b_hh, lengths);
  const int64_t T = d.T, B = d.B, H = d.H;
  DeviceGuard guard(x.device());
  at::NoGradGuard no_grad;  // internals are not differentiated; gradients come from gru_bwd
  const auto io = x.scalar_type();
  const auto acc = acc_dtype(io);

  // b_hh stays out of the projection: its n rows sit inside r * (W_hn h + b_hn).
  const Tensor xp = input_projection(x, w_ih, b_ih, std::nullopt);  // (T, B, 3H) acc
  const Tensor b_hh_a = b_hh ? b_hh->to(acc) : Tensor();
  Tensor y = at::empty({T, B, H}, x.options());
  Tensor gates = saved_or_empty(need_saved, {T, B, 3 * H}, x);
  Tensor ghn = saved_or_empty(need_saved, {T, B, H}, x);

  if (acc == at::kFloat) {
    Tensor hn = at::empty({B, H}, x.options());
    const auto p = persistent_args(cuda::Cell::kGru, x, xp, w_hh, b_hh_a, h0, nullptr, lengths, y,
                                   hn, nullptr, gates, ghn, need_saved);
    if (try_persistent(p, x)) return {y, hn, gates, ghn};
  }

  // General path.
  const Tensor w_hh_t = w_hh.to(acc).t();  // (H, 3H) view
  Tensor h = h0.to(acc, /*non_blocking=*/false, /*copy=*/true);
  Tensor gh = at::empty({B, 3 * H}, x.options().dtype(acc));
  void* stream = stream_of(x);
  cuda::GruFwdStep p{};
  p.io = io_code(io);
  p.B = static_cast<int>(B);
  p.H = static_cast<int>(H);
  p.gh = gh.data_ptr();
  p.h = h.data_ptr();
  p.lengths = lengths_ptr(lengths);
  p.b_hh = b_hh_a.defined() ? b_hh_a.data_ptr() : nullptr;
  for (int64_t t = 0; t < T; ++t) {
    at::mm_out(gh, h, w_hh_t);  // gh = h_{t-1} W_hh^T; the kernel adds b_hh
    p.t = static_cast<int>(t);
    p.xp_t = at_step(xp, t);
    p.y_t = at_step(y, t);
    p.gates_t = need_saved ? at_step(gates, t) : nullptr;
    p.ghn_t = need_saved ? at_step(ghn, t) : nullptr;
    check_launch(cuda::launch_gru_fwd_step(p, stream), "gru forward step");
  }
  return {y, h.to(io), gates, ghn};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> gru_bwd(
    const Tensor& x, const Tensor& h0, const Tensor& w_ih, const Tensor& w_hh, const Tensor& y,
    const Tensor& gates, const Tensor& ghn, const OptTensor& lengths, const Tensor& dy,
    const Tensor& dhn) {
  const char* op = "fused_rnn::gru_bwd";
  const Dims d =
      check_common(op, 3, x, h0, nullptr, w_ih, w_hh, std::nullopt, std::nullopt, lengths);
  const int64_t T = d.T, B = d.B, I = d.I, H = d.H;
  const auto io = x.scalar_type();
  const auto acc = acc_dtype(io);
  TORCH_CHECK(gates.numel() != 0, op,
              ": the saved gates are empty; run gru_fwd with need_saved=True");
  check_tensor(op, "y", y, {T, B, H}, io, x);
  check_tensor(op, "gates", gates, {T, B, 3 * H}, acc, x);
  check_tensor(op, "ghn", ghn, {T, B, H}, acc, x);
  check_tensor(op, "dy", dy, {T, B, H}, io, x);
  check_tensor(op, "dhn", dhn, {B, H}, io, x);
  DeviceGuard guard(x.device());
  at::NoGradGuard no_grad;

  Tensor dh = dhn.to(acc, /*non_blocking=*/false, /*copy=*/true);
  Tensor dxp = at::empty({T, B, 3 * H}, x.options().dtype(acc));
  Tensor dgh = at::empty({T, B, 3 * H}, x.options().dtype(acc));
  if (persistent_bwd_requested(io)) {
    cuda::PersistentBwd pb =
        persistent_bwd_args(cuda::Cell::kGru, x, w_hh, gates, ghn, dy, dhn, lengths, dgh, dh);
    pb.h0 = h0.data_ptr();
    pb.y = y.data_ptr();
    pb.dxp = dxp.data_ptr<float>();
    run_persistent_bwd(pb, x);
  } else {
    const Tensor w_hh_a = w_hh.to(acc);  // (3H, H)
    void* stream = stream_of(x);
    cuda::GruBwdStep p{};
    p.io = io_code(io);
    p.B = static_cast<int>(B);
    p.H = static_cast<int>(H);
    p.dh = dh.data_ptr();
    p.lengths = lengths_ptr(lengths);
    for (int64_t t = T - 1; t >= 0; --t) {
      p.t = static_cast<int>(t);
      p.gates_t = at_step(gates, t);
      p.ghn_t = at_step(ghn, t);
      p.h_prev = t > 0 ? at_step(y, t - 1) : h0.data_ptr();
      p.dy_t = at_step(dy, t);
      p.dxp_t = at_step(dxp, t);
      p.dgh_t = at_step(dgh, t);
      check_launch(cuda::launch_gru_bwd_step(p, stream), "gru backward step");
      dh.addmm_(dgh.select(0, t), w_hh_a);  // dL/dh_{t-1} = dh * z + dgh_t W_hh
    }
  }

  const Tensor dxp2 = dxp.view({T * B, 3 * H});
  const Tensor dgh2 = dgh.view({T * B, 3 * H});
  const Tensor x2 = x.view({T * B, I}).to(acc);
  const Tensor h_prev = at::cat({h0.unsqueeze(0), y.slice(0, 0, T - 1)}, 0).to(acc);
  const Tensor dx = at::mm(dxp2, w_ih.to(acc)).view({T, B, I}).to(io);
  const Tensor dw_ih = at::mm(dxp2.t(), x2).to(io);
  const Tensor dw_hh = at::mm(dgh2.t(), h_prev.view({T * B, H})).to(io);
  return {dx, dh.to(io), dw_ih, dw_hh, dxp2.sum(0).to(io), dgh2.sum(0).to(io)};
}

}  // namespace cuda_ops
}  // namespace fused_rnn

#ifdef FUSED_RNN_CUDA_EMULATE
// Test-only namespace, CPU kernels (as the CUDA ones, below autograd); the schemas are inferred
// from the C++ signatures.
TORCH_LIBRARY(fused_rnn_cuda_emu, m) {
  m.def("lstm_fwd", torch::dispatch(c10::DispatchKey::CPU, &fused_rnn::cuda_ops::lstm_fwd));
  m.def("lstm_bwd", torch::dispatch(c10::DispatchKey::CPU, &fused_rnn::cuda_ops::lstm_bwd));
  m.def("gru_fwd", torch::dispatch(c10::DispatchKey::CPU, &fused_rnn::cuda_ops::gru_fwd));
  m.def("gru_bwd", torch::dispatch(c10::DispatchKey::CPU, &fused_rnn::cuda_ops::gru_bwd));
}
#else
TORCH_LIBRARY_IMPL(fused_rnn, CUDA, m) {
  m.impl("lstm_fwd", &fused_rnn::cuda_ops::lstm_fwd);
  m.impl("lstm_bwd", &fused_rnn::cuda_ops::lstm_bwd);
  m.impl("gru_fwd", &fused_rnn::cuda_ops::gru_fwd);
  m.impl("gru_bwd", &fused_rnn::cuda_ops::gru_bwd);
}
#endif
