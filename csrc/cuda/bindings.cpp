// CUDA implementation of the fused_rnn ops (schemas: csrc/ops.cpp): tensors -> the torch-free
// launchers of launchers.h; every GEMM goes through ATen (cuBLAS on CUDA). Written once for every
// cell (cuda::Cell); the ops at the end only unpack their arguments.
//
// Forward: the input projection of all T steps is one GEMM. Then either the persistent kernel
// (persistent.cu: all steps in one cooperative launch) or, when that cannot run, the general
// path: per step one recurrent GEMM + one fused pointwise kernel (pointwise.cu); LSTM with
// proj_size adds the projection GEMM and its masked hand-over per step (general path only).
// Backward: per step, in reverse time, one fused pointwise kernel + one GEMM for the gradient
// w.r.t. h_{t-1} (or, opt-in, the persistent backward kernel for all steps); then dx, dW_ih,
// dW_hh, dW_hr and the bias gradients are single GEMMs / reductions over all steps.
//
// Precision: states, saved activations and all GEMM outputs are in the acc dtype (float for
// fp16 / bf16 / fp32 inputs, double for fp64). fp16 / bf16 input projections use cuBLAS with
// fp32 output (at::mm out_dtype); the other GEMMs run on acc copies of their operands.
//
// Path choice: env FUSED_RNN_CUDA_PATH = auto (default) | general | persistent picks the forward;
// "persistent" raises instead of falling back, so tests can tell which path ran.
// FUSED_RNN_CUDA_MMA=1 puts the persistent forward's matvec on tensor cores (fp16 / bf16), and
// FUSED_RNN_CUDA_BWD=persistent runs the persistent backward (persistent_bwd.cu); both opt-in
// until they have passed on a GPU. LSTM with proj_size has no persistent path (auto falls back).
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
// Only the stream and the device guard: ATen/cuda/CUDAContext.h would pull in cuBLAS / cuSPARSE /
// cuSOLVER headers that a CUDA toolkit may lack, and nothing here uses them.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
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

// The shared argument checks (csrc/ops.cpp) plus the device. Returns the sizes; with w_hr
// (LSTM proj_size) H is the cell's hidden size and P = w_hr.size(0) the width of h.
Dims check_common(const char* op, int64_t G, const Tensor& x, const Tensor& h0, const Tensor* c0,
                  const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih,
                  const OptTensor& b_hh, const OptTensor& w_hr, const OptTensor& lengths,
                  int64_t& P) {
#ifdef FUSED_RNN_CUDA_EMULATE
  TORCH_CHECK(x.device().is_cpu(), op, " (cuda emulation): x must be on the CPU");
#else
  TORCH_CHECK(x.is_cuda(), op, " (cuda): x must be a CUDA tensor, got ", x.device());
#endif
  // Lengths values are not read back (that would sync the device); out-of-range values cannot
  // cause an out-of-bounds access, as a kernel only compares t < lengths[b].
  if (!w_hr) {
    const Dims d = check_inputs(op, G, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths);
    P = d.H;
    return d;
  }
  // proj_size: w_hh (G*H, P) and h0 (B, P) differ from check_inputs' (G*H, H) and (B, H), so
  // the shared check runs with c0 and an empty (G*H, H) tensor standing in for them, and the
  // P-wide tensors are checked apart. (Until check_inputs in csrc/ops.cpp takes w_hr.)
  TORCH_CHECK(w_hr->dim() == 2, op, ": w_hr must be (P, H), got ", w_hr->dim(), " dimensions");
  P = w_hr->size(0);
  const int64_t H = w_hr->size(1);
  TORCH_CHECK(P >= 1 && H >= 1, op, ": w_hr must be (P, H) with P, H >= 1, got ", w_hr->sizes());
  const Dims d = check_inputs(op, G, x, *c0, c0, w_ih, w_hh.new_empty({G * H, H}), b_ih, b_hh,
                              lengths);
  check_tensor(op, "w_hh", w_hh, {G * H, P}, x.scalar_type(), x);
  check_tensor(op, "h0", h0, {d.B, P}, x.scalar_type(), x);
  check_tensor(op, "w_hr", *w_hr, {P, H}, x.scalar_type(), x);
  return d;
}
const int64_t* lengths_ptr(const OptTensor& lengths) {
  return lengths.has_value() && lengths->defined() ? lengths->data_ptr<int64_t>() : nullptr;
}

void* stream_of(const Tensor& x) {
#ifdef FUSED_RNN_CUDA_EMULATE
  (void)x;
  return nullptr;
#else
  return static_cast<void*>(c10::cuda::getCurrentCUDAStream(x.device().index()).stream());
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

// Tries the persistent forward kernel. True when it ran (outputs written), false when the
// general path must run instead. `declined`: why this case has no persistent path, or null.
bool try_persistent(cuda::PersistentFwd p, const Tensor& x, const char* declined) {
  const PathChoice choice = path_choice();
  if (choice == PathChoice::kGeneral) return false;
#ifdef FUSED_RNN_CUDA_EMULATE
  TORCH_CHECK(choice != PathChoice::kPersistent,
              "fused_rnn (cuda emulation): the persistent path is not emulated");
  (void)p;
  (void)x;
  (void)declined;
  return false;
#else
  if (p.io == DType::kF64) declined = "fp64 has no persistent path";
  if (declined != nullptr) {
    TORCH_CHECK(choice != PathChoice::kPersistent,
                "fused_rnn (cuda): FUSED_RNN_CUDA_PATH=persistent, but ", declined);
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
bool persistent_bwd_requested(at::ScalarType io, bool proj) {
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
  TORCH_CHECK(!proj,
              "fused_rnn (cuda): FUSED_RNN_CUDA_BWD=persistent, but proj_size has no persistent "
              "path");
  return true;
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

void* ptr_or_null(const Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

#ifdef FUSED_RNN_CUDA_EMULATE
struct DeviceGuard {
  explicit DeviceGuard(at::Device) {}
};
#else
using DeviceGuard = c10::cuda::CUDAGuard;
#endif

// What the cell's backward reads: LSTM and GRU save gates + aux, the RNN reads y alone.
bool saves_gates(cuda::Cell cell) { return cell == cuda::Cell::kLstm || cell == cuda::Cell::kGru; }

// The forward of any cell. c0 / cn: LSTM only; w_hr: LSTM proj_size only.
struct FwdOut {
  Tensor y, hn, cn, gates, aux;
};

FwdOut forward(cuda::Cell cell, const char* op, const Tensor& x, const Tensor& h0,
               const Tensor* c0, const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih,
               const OptTensor& b_hh, const OptTensor& w_hr, const OptTensor& lengths,
               bool need_saved) {
  const int64_t G = cuda::gates_of(cell);
  int64_t P = 0;
  const Dims d = check_common(op, G, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, P);
  const int64_t T = d.T, B = d.B, H = d.H;
  DeviceGuard guard(x.device());
  at::NoGradGuard no_grad;  // internals are not differentiated; gradients come from the bwd op
  const auto io = x.scalar_type();
  const auto acc = acc_dtype(io);
  const bool apart = cell == cuda::Cell::kGru;  // b_hn sits inside r * (W_hn h + b_hn)

  const Tensor xp = input_projection(x, w_ih, b_ih, apart ? std::nullopt : b_hh);  // (T,B,GH)
  const Tensor b_hh_a = apart && b_hh ? b_hh->to(acc) : Tensor();
  const bool save = need_saved && saves_gates(cell);
  FwdOut out;
  out.y = at::empty({T, B, P}, x.options());
  out.gates = saved_or_empty(save, {T, B, G * H}, x);
  out.aux = saved_or_empty(save, {T, B, H}, x);

  if (acc == at::kFloat) {
    cuda::PersistentFwd p{};
    p.cell = cell;
    p.io = io_code(io);
    p.T = static_cast<int>(T);
    p.B = static_cast<int>(B);
    p.H = static_cast<int>(H);
    p.xp = xp.data_ptr<float>();
    p.w_hh = w_hh.data_ptr();
    p.b_hh = b_hh_a.defined() ? b_hh_a.data_ptr<float>() : nullptr;
    p.h0 = h0.data_ptr();
    p.c0 = c0 != nullptr ? c0->data_ptr() : nullptr;
    p.lengths = lengths_ptr(lengths);
    p.y = out.y.data_ptr();
    out.hn = at::empty({B, P}, x.options());
    out.cn = c0 != nullptr ? at::empty({B, H}, x.options()) : Tensor();
    p.hn = out.hn.data_ptr();
    p.cn = ptr_or_null(out.cn);
    p.gates = save ? out.gates.data_ptr<float>() : nullptr;
    p.aux = save ? out.aux.data_ptr<float>() : nullptr;
    p.tensor_cores = tensor_cores_requested();
    if (try_persistent(p, x, w_hr ? "proj_size has no persistent path" : nullptr)) return out;
  }

  // General path. With proj the pointwise kernel writes r_t = o * tanh(c_t) into r, and
  // h_t = r_t W_hr^T reaches h and y[t] through the projection GEMM + masked hand-over.
  const Tensor w_hh_t = w_hh.to(acc).t();  // (P, G*H) view
  Tensor h = h0.to(acc, /*non_blocking=*/false, /*copy=*/true);  // (B, P)
  Tensor c = c0 != nullptr ? c0->to(acc, /*non_blocking=*/false, /*copy=*/true) : Tensor();
  Tensor pre = at::empty({B, G * H}, x.options().dtype(acc));
  const Tensor w_hr_t = w_hr ? w_hr->to(acc).t() : Tensor();  // (H, P) view
  Tensor r = w_hr ? at::zeros({B, H}, x.options().dtype(acc)) : Tensor();
  Tensor hp = w_hr ? at::empty({B, P}, x.options().dtype(acc)) : Tensor();
  void* stream = stream_of(x);
  cuda::FwdStep p{};
  p.io = io_code(io);
  p.B = static_cast<int>(B);
  p.H = static_cast<int>(H);
  p.pre = pre.data_ptr();
  p.b_hh = ptr_or_null(b_hh_a);
  p.h = w_hr ? r.data_ptr() : h.data_ptr();
  p.c = ptr_or_null(c);
  p.lengths = lengths_ptr(lengths);
  cuda::ProjFwdStep pp{p.io, p.B, static_cast<int>(P), 0, ptr_or_null(hp), h.data_ptr(), nullptr,
                       p.lengths};
  for (int64_t t = 0; t < T; ++t) {
    // pre = h_{t-1} W_hh^T; the kernel adds xp[t] (one launch fewer than addmm's copy + GEMM).
    at::mm_out(pre, h, w_hh_t);
    p.t = static_cast<int>(t);
    p.xp_t = at_step(xp, t);
    p.y_t = w_hr ? nullptr : at_step(out.y, t);
    p.gates_t = save ? at_step(out.gates, t) : nullptr;
    p.aux_t = save ? at_step(out.aux, t) : nullptr;
    check_launch(cuda::launch_fwd_step(cell, p, stream), "forward step");
    if (w_hr) {
      at::mm_out(hp, r, w_hr_t);  // hp = r_t W_hr^T
      pp.t = p.t;
      pp.y_t = at_step(out.y, t);
      check_launch(cuda::launch_proj_fwd_step(pp, stream), "projection step");
    }
  }
  out.hn = h.to(io);
  out.cn = c.defined() ? c.to(io) : Tensor();
  return out;
}

// The backward of any cell; the tensors are the forward's inputs and outputs (see launchers.h).
struct BwdOut {
  Tensor dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr;
};

BwdOut backward(cuda::Cell cell, const char* op, const Tensor& x, const Tensor& h0,
                const Tensor* c0, const Tensor& w_ih, const Tensor& w_hh, const OptTensor& w_hr,
                const Tensor& y, const Tensor& gates, const Tensor& aux, const OptTensor& lengths,
                const Tensor& dy, const Tensor& dhn, const Tensor* dcn) {
  const int64_t G = cuda::gates_of(cell);
  int64_t P = 0;
  const Dims d = check_common(op, G, x, h0, c0, w_ih, w_hh, std::nullopt, std::nullopt, w_hr,
                              lengths, P);
  const int64_t T = d.T, B = d.B, I = d.I, H = d.H;
  const auto io = x.scalar_type();
  const auto acc = acc_dtype(io);
  const bool save = saves_gates(cell), apart = cell == cuda::Cell::kGru;
  if (save) {
    TORCH_CHECK(gates.numel() != 0, op, ": the saved gates are empty; run ",
                apart ? "gru_fwd" : "lstm_fwd", " with need_saved=True");
    check_tensor(op, "gates", gates, {T, B, G * H}, acc, x);
    check_tensor(op, apart ? "ghn" : "cs", aux, {T, B, H}, acc, x);
  }
  check_tensor(op, "y", y, {T, B, P}, io, x);
  check_tensor(op, "dy", dy, {T, B, P}, io, x);
  check_tensor(op, "dhn", dhn, {B, P}, io, x);
  if (dcn != nullptr) check_tensor(op, "dcn", *dcn, {B, H}, io, x);
  DeviceGuard guard(x.device());
  at::NoGradGuard no_grad;

  const auto opts = x.options().dtype(acc);
  const Tensor c0_a = c0 != nullptr ? c0->to(acc).contiguous() : Tensor();
  Tensor dh = dhn.to(acc, /*non_blocking=*/false, /*copy=*/true);  // (B, P)
  Tensor dc = dcn != nullptr ? dcn->to(acc, /*non_blocking=*/false, /*copy=*/true) : Tensor();
  Tensor dxp = at::empty({T, B, G * H}, opts);
  Tensor dgh = apart ? at::empty({T, B, G * H}, opts) : dxp;  // equal unless b_hh sits apart
  Tensor dhp = w_hr ? at::empty({T, B, P}, opts) : Tensor();   // proj: all of dL/dh_t
  if (persistent_bwd_requested(io, w_hr.has_value())) {
    cuda::PersistentBwd pb{};
    pb.cell = cell;
    pb.io = io_code(io);
    pb.T = static_cast<int>(T);
    pb.B = static_cast<int>(B);
    pb.H = static_cast<int>(H);
    pb.w_hh = w_hh.data_ptr();
    pb.gates = save ? gates.data_ptr<float>() : nullptr;
    pb.aux = save ? aux.data_ptr<float>() : nullptr;
    pb.c0 = c0 != nullptr ? c0_a.data_ptr<float>() : nullptr;
    pb.h0 = apart ? h0.data_ptr() : nullptr;
    pb.y = cell != cuda::Cell::kLstm ? y.data_ptr() : nullptr;
    pb.dy = dy.data_ptr();
    pb.dhn = dhn.data_ptr();
    pb.dcn = dcn != nullptr ? dcn->data_ptr() : nullptr;
    pb.lengths = lengths_ptr(lengths);
    pb.dgh = dgh.data_ptr<float>();
    pb.dxp = apart ? dxp.data_ptr<float>() : nullptr;
    pb.dh0 = dh.data_ptr<float>();
    pb.dc0 = dc.defined() ? dc.data_ptr<float>() : nullptr;
    run_persistent_bwd(pb, x);
  } else {
    const Tensor w_hh_a = w_hh.to(acc);                        // (G*H, P)
    const Tensor w_hr_a = w_hr ? w_hr->to(acc) : Tensor();     // (P, H)
    Tensor dr = w_hr ? at::empty({B, H}, opts) : Tensor();     // proj: dL/dr_t
    void* stream = stream_of(x);
    cuda::BwdStep p{};
    p.io = io_code(io);
    p.B = static_cast<int>(B);
    p.H = static_cast<int>(H);
    p.dh = w_hr ? dr.data_ptr() : dh.data_ptr();
    p.dc = ptr_or_null(dc);
    p.lengths = lengths_ptr(lengths);
    cuda::ProjBwdStep pp{p.io, p.B, static_cast<int>(P), 0, nullptr, dh.data_ptr(), nullptr,
                         p.lengths};
    for (int64_t t = T - 1; t >= 0; --t) {
      p.t = static_cast<int>(t);
      if (w_hr) {
        pp.t = p.t;
        pp.dy_t = at_step(dy, t);
        pp.dhp_t = at_step(dhp, t);
        check_launch(cuda::launch_proj_bwd_step(pp, stream), "projection backward step");
        at::mm_out(dr, dhp.select(0, t), w_hr_a);  // dL/dr_t = dL/dh_t W_hr
      }
      p.dy_t = w_hr ? nullptr : at_step(dy, t);
      if (save) {
        p.gates_t = at_step(gates, t);
        p.aux_t = at_step(aux, t);
      }
      if (cell == cuda::Cell::kLstm) p.c_prev = t > 0 ? at_step(aux, t - 1) : c0_a.data_ptr();
      if (apart) p.h_prev = t > 0 ? at_step(y, t - 1) : h0.data_ptr();
      if (!save) p.y_t = at_step(y, t);
      p.dxp_t = at_step(dxp, t);
      p.dgh_t = apart ? at_step(dgh, t) : nullptr;
      check_launch(cuda::launch_bwd_step(cell, p, stream), "backward step");
      dh.addmm_(dgh.select(0, t), w_hh_a);  // dL/dh_{t-1} += dgh_t W_hh
    }
  }

  // Over all steps at once. h_{t-1} = y[t-1] wherever step t is valid (elsewhere dgh is 0).
  const Tensor dxp2 = dxp.view({T * B, G * H});
  const Tensor dgh2 = dgh.view({T * B, G * H});
  const Tensor h_prev = at::cat({h0.unsqueeze(0), y.slice(0, 0, T - 1)}, 0).to(acc);
  BwdOut g;
  g.dx = at::mm(dxp2, w_ih.to(acc)).view({T, B, I}).to(io);
  g.dh0 = dh.to(io);
  g.dc0 = dc.defined() ? dc.to(io) : Tensor();
  g.dw_ih = at::mm(dxp2.t(), x.view({T * B, I}).to(acc)).to(io);
  g.dw_hh = at::mm(dgh2.t(), h_prev.view({T * B, P})).to(io);
  g.db_ih = dxp2.sum(0).to(io);
  g.db_hh = apart ? dgh2.sum(0).to(io) : g.db_ih;
  if (w_hr) {
    // r_t = o_t * tanh(c_t) from the saved gates and cell states (both 0 at padded steps).
    const Tensor r = gates.slice(2, 3 * H, 4 * H) * aux.tanh();
    g.dw_hr = at::mm(dhp.view({T * B, P}).t(), r.reshape({T * B, H})).to(io);
  } else {
    g.dw_hr = at::empty({0}, x.options());
  }
  return g;
}

cuda::Cell rnn_cell(bool relu) { return relu ? cuda::Cell::kRnnRelu : cuda::Cell::kRnnTanh; }

}  // namespace

// ---------------------------------------------------------------------------------------------
// The ops (schemas: csrc/ops.cpp)
// ---------------------------------------------------------------------------------------------

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_fwd(
    const Tensor& x, const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
    const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr, const OptTensor& lengths,
    bool need_saved) {
  FwdOut o = forward(cuda::Cell::kLstm, "fused_rnn::lstm_fwd", x, h0, &c0, w_ih, w_hh, b_ih, b_hh,
                     w_hr, lengths, need_saved);
  return {o.y, o.hn, o.cn, o.gates, o.aux};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_bwd(
    const Tensor& x, const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
    const OptTensor& w_hr, const Tensor& y, const Tensor& gates, const Tensor& cs,
    const OptTensor& lengths, const Tensor& dy, const Tensor& dhn, const Tensor& dcn) {
  BwdOut g = backward(cuda::Cell::kLstm, "fused_rnn::lstm_bwd", x, h0, &c0, w_ih, w_hh, w_hr, y,
                      gates, cs, lengths, dy, dhn, &dcn);
  return {g.dx, g.dh0, g.dc0, g.dw_ih, g.dw_hh, g.db_ih, g.dw_hr};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> gru_fwd(const Tensor& x, const Tensor& h0,
                                                    const Tensor& w_ih, const Tensor& w_hh,
                                                    const OptTensor& b_ih, const OptTensor& b_hh,
                                                    const OptTensor& lengths, bool need_saved) {
  FwdOut o = forward(cuda::Cell::kGru, "fused_rnn::gru_fwd", x, h0, nullptr, w_ih, w_hh, b_ih,
                     b_hh, std::nullopt, lengths, need_saved);
  return {o.y, o.hn, o.gates, o.aux};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> gru_bwd(
    const Tensor& x, const Tensor& h0, const Tensor& w_ih, const Tensor& w_hh, const Tensor& y,
    const Tensor& gates, const Tensor& ghn, const OptTensor& lengths, const Tensor& dy,
    const Tensor& dhn) {
  BwdOut g = backward(cuda::Cell::kGru, "fused_rnn::gru_bwd", x, h0, nullptr, w_ih, w_hh,
                      std::nullopt, y, gates, ghn, lengths, dy, dhn, nullptr);
  return {g.dx, g.dh0, g.dw_ih, g.dw_hh, g.db_ih, g.db_hh};
}

std::tuple<Tensor, Tensor> rnn_fwd(const Tensor& x, const Tensor& h0, const Tensor& w_ih,
                                   const Tensor& w_hh, const OptTensor& b_ih,
                                   const OptTensor& b_hh, const OptTensor& lengths, bool relu,
                                   bool need_saved) {
  FwdOut o = forward(rnn_cell(relu), "fused_rnn::rnn_fwd", x, h0, nullptr, w_ih, w_hh, b_ih, b_hh,
                     std::nullopt, lengths, need_saved);
  return {o.y, o.hn};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> rnn_bwd(
    const Tensor& x, const Tensor& h0, const Tensor& w_ih, const Tensor& w_hh, const Tensor& y,
    const OptTensor& lengths, bool relu, const Tensor& dy, const Tensor& dhn) {
  BwdOut g = backward(rnn_cell(relu), "fused_rnn::rnn_bwd", x, h0, nullptr, w_ih, w_hh,
                      std::nullopt, y, Tensor(), Tensor(), lengths, dy, dhn, nullptr);
  return {g.dx, g.dh0, g.dw_ih, g.dw_hh, g.db_ih};
}

}  // namespace cuda_ops
}  // namespace fused_rnn

#ifdef FUSED_RNN_CUDA_EMULATE
// Test-only namespace, CPU kernels (as the CUDA ones, below autograd); the schemas are inferred
// from the C++ signatures.
TORCH_LIBRARY(fused_rnn_cuda_emu, m) {
  using namespace fused_rnn::cuda_ops;
  const auto cpu = c10::DispatchKey::CPU;
  m.def("lstm_fwd", torch::dispatch(cpu, &lstm_fwd));
  m.def("lstm_bwd", torch::dispatch(cpu, &lstm_bwd));
  m.def("gru_fwd", torch::dispatch(cpu, &gru_fwd));
  m.def("gru_bwd", torch::dispatch(cpu, &gru_bwd));
  m.def("rnn_fwd", torch::dispatch(cpu, &rnn_fwd));
  m.def("rnn_bwd", torch::dispatch(cpu, &rnn_bwd));
}
#else
TORCH_LIBRARY_IMPL(fused_rnn, CUDA, m) {
  using namespace fused_rnn::cuda_ops;
  m.impl("lstm_fwd", &lstm_fwd);
  m.impl("lstm_bwd", &lstm_bwd);
  m.impl("gru_fwd", &gru_fwd);
  m.impl("gru_bwd", &gru_bwd);
  m.impl("rnn_fwd", &rnn_fwd);
  m.impl("rnn_bwd", &rnn_bwd);
}
#endif
