// Torch-free interface between the CUDA kernels (csrc/cuda/*.cu, compiled by nvcc) and the torch
// binding (csrc/cuda/bindings.cpp). Plain structs of raw pointers; no torch, no CUDA headers.
//
// Dimension legend: T time steps, B batch, I input features, H hidden size, G gates (4 for LSTM
// in order i, f, g, o; 3 for GRU in order r, z, n). All tensors are dense row-major (C
// contiguous) with the shapes given; "[t]" means the slice at time step t of a (T, ...) tensor.
//
// Dtypes: "io" is the dtype of x and the weights (DType below); "acc" is double for kF64 and
// float otherwise. Every state buffer and every saved activation is acc.
//
// Lengths: `lengths` is null (every sequence has T steps) or int64 (B,) with 1 <= len <= T on
// the device. A step t is "valid" for sequence b when t < lengths[b]. At invalid steps a kernel
// writes y[t, b] = 0, zeros the saved activations of (t, b), and leaves the state of b untouched,
// so the final state is the one after step lengths[b] - 1.
//
// Aliasing: no two pointers of one struct may overlap, except where a field says "in/out"
// (read and written in place by the same thread, element by element).
#pragma once

#include <cstdint>
#include <string>

namespace fused_rnn {
namespace cuda {

enum class DType : int { kF32 = 0, kF64 = 1, kF16 = 2, kBF16 = 3 };

// ---------------------------------------------------------------------------------------------
// General path: per time step, a GEMM (done by the caller through cuBLAS) and one of these
// fused pointwise kernels. One thread per (b, j), j < H. Each launcher enqueues one kernel on
// `stream` (a cudaStream_t) and returns "" or the CUDA error text of the launch.
// ---------------------------------------------------------------------------------------------

struct LstmFwdStep {
  DType io;
  int B, H, t;
  const void* xp_t;   // (B, 4H) acc: x[t] W_ih^T + b_ih + b_hh
  const void* pre;    // (B, 4H) acc: h_{t-1} W_hh^T
  void* h;            // (B, H) acc, in/out: h_{t-1} in, h_t out (frozen where invalid)
  void* c;            // (B, H) acc, in/out: c_{t-1} in, c_t out (frozen where invalid)
  void* y_t;          // (B, H) io: y[t]
  void* gates_t;      // (B, 4H) acc: post-activation i, f, g, o of step t; null = not saved
  void* cs_t;         // (B, H) acc: c_t; null exactly when gates_t is null
  const int64_t* lengths;  // (B,) or null
};

struct LstmBwdStep {
  DType io;
  int B, H, t;
  const void* gates_t;  // (B, 4H) acc: saved i, f, g, o of step t
  const void* cs_t;     // (B, H) acc: saved c_t
  const void* c_prev;   // (B, H) acc: c_{t-1} (saved cs[t-1], or c0 converted to acc at t = 0)
  const void* dy_t;     // (B, H) io: dy[t] (ignored where invalid)
  void* dh;   // (B, H) acc, in/out: dL/dh_t from later steps in; where valid, 0 out (the
              // caller then adds dpre_t W_hh, which is dL/dh_{t-1}); unchanged where invalid
  void* dc;   // (B, H) acc, in/out: dL/dc_t in, dL/dc_{t-1} out (unchanged where invalid)
  void* dpre_t;  // (B, 4H) acc out: dL/d(pre-activations) of step t; 0 where invalid
  const int64_t* lengths;
};

struct GruFwdStep {
  DType io;
  int B, H, t;
  const void* xp_t;  // (B, 3H) acc: x[t] W_ih^T + b_ih
  const void* gh;    // (B, 3H) acc: h_{t-1} W_hh^T
  const void* b_hh;  // (3H,) acc or null
  void* h;           // (B, H) acc, in/out
  void* y_t;         // (B, H) io
  void* gates_t;     // (B, 3H) acc: r, z, n of step t; null = not saved
  void* ghn_t;       // (B, H) acc: (h_{t-1} W_hh^T + b_hh)[:, 2H:]; null exactly when gates_t is
  const int64_t* lengths;
};

struct GruBwdStep {
  DType io;
  int B, H, t;
  const void* gates_t;  // (B, 3H) acc: saved r, z, n
  const void* ghn_t;    // (B, H) acc: saved W_hn h_{t-1} + b_hn
  const void* h_prev;   // (B, H) io: y[t-1], or h0 at t = 0
  const void* dy_t;     // (B, H) io
  void* dh;     // (B, H) acc, in/out: dL/dh_t in; where valid, dL/dh_t * z out (the caller
                // then adds dgh_t W_hh); unchanged where invalid
  void* dxp_t;  // (B, 3H) acc out: dL/d(x[t] W_ih^T + b_ih); 0 where invalid
  void* dgh_t;  // (B, 3H) acc out: dL/d(h_{t-1} W_hh^T + b_hh); 0 where invalid
  const int64_t* lengths;
};

std::string launch_lstm_fwd_step(const LstmFwdStep& p, void* stream);
std::string launch_lstm_bwd_step(const LstmBwdStep& p, void* stream);
std::string launch_gru_fwd_step(const GruFwdStep& p, void* stream);
std::string launch_gru_bwd_step(const GruBwdStep& p, void* stream);

// ---------------------------------------------------------------------------------------------
// Persistent path (forward): one cooperative kernel runs all T steps. Each block owns a slice
// of hidden units and keeps those units' rows of W_hh in shared memory for the whole sequence;
// h_t is exchanged through `hbuf` behind a grid-wide barrier each step.
// ---------------------------------------------------------------------------------------------

enum class Cell : int { kLstm = 0, kGru = 1 };

struct PersistentFwd {
  Cell cell;
  DType io;          // kF32, kF16 or kBF16 (kF64 is never persistent)
  int T, B, H;
  const float* xp;   // (T, B, G*H) float: x W_ih^T + b_ih (+ b_hh for LSTM)
  const void* w_hh;  // (G*H, H) io
  const float* b_hh;  // GRU: (3H,) float or null; LSTM: must be null (folded into xp)
  const void* h0;    // (B, H) io
  const void* c0;    // LSTM: (B, H) io; GRU: null
  const int64_t* lengths;  // (B,) or null
  void* y;           // (T, B, H) io
  void* hn;          // (B, H) io
  void* cn;          // LSTM: (B, H) io; GRU: null
  float* gates;      // (T, B, G*H) float or null (not saved)
  float* saved2;     // LSTM: cs (T, B, H); GRU: ghn (T, B, H); float; null iff gates is null
  float* hbuf;       // (2, B, H) float workspace, no other use; contents on entry ignored
  bool tensor_cores;  // fp16 / bf16 with H % 16 == 0: recurrent matvec on tensor cores, h
                      // rounded to io for the product (state and gate math stay fp32)
};

enum class Status : int { kOk = 0, kNotApplicable = 1, kError = 2 };

struct LaunchResult {
  Status status;
  std::string message;  // why not applicable, or the CUDA error; empty when kOk
};

// Plans and launches. kNotApplicable (nothing was launched) when the slice of W_hh does not fit
// in shared memory, when the device cannot co-schedule the grid, or for fp64: the caller then
// runs the general path. `device` is the CUDA ordinal the stream belongs to.
LaunchResult launch_persistent_fwd(const PersistentFwd& p, int device, void* stream);

// ---------------------------------------------------------------------------------------------
// Persistent path (backward): one cooperative kernel runs the reverse-time recurrence and writes
// the pre-activation gradients of all steps; each block keeps the COLUMNS of W_hh of its hidden
// units in shared memory; dgh[t] doubles as the exchange buffer between steps. Same
// applicability rules and results as launch_persistent_fwd.
// ---------------------------------------------------------------------------------------------

struct PersistentBwd {
  Cell cell;
  DType io;            // kF32, kF16 or kBF16
  int T, B, H;
  const void* w_hh;    // (G*H, H) io
  const float* gates;  // (T, B, G*H) float: the forward's saved activations
  const float* saved2;  // LSTM: cs (T, B, H); GRU: ghn (T, B, H); float
  const float* c0;     // LSTM: (B, H) float (c0 converted); GRU: null
  const void* h0;      // GRU: (B, H) io (h_prev at t = 0); LSTM: null
  const void* y;       // GRU: (T, B, H) io (y[t-1] is h_prev at t > 0); LSTM: null
  const void* dy;      // (T, B, H) io (ignored where invalid)
  const void* dhn;     // (B, H) io
  const void* dcn;     // LSTM: (B, H) io; GRU: null
  const int64_t* lengths;  // (B,) or null
  float* dgh;          // out (T, B, G*H): gradient of h_{t-1} W_hh^T (+ b_hh) per step (LSTM:
                       // of all 4H pre-activations); 0 where invalid. Also read by the kernel.
  float* dxp;          // GRU out (T, B, 3H): gradient of x[t] W_ih^T + b_ih; LSTM: null
  float* dh0;          // out (B, H) float
  float* dc0;          // LSTM out (B, H) float; GRU: null
};

LaunchResult launch_persistent_bwd(const PersistentBwd& p, int device, void* stream);

}  // namespace cuda
}  // namespace fused_rnn
