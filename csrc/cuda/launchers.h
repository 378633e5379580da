// Torch-free interface between the CUDA kernels (csrc/cuda/*.cu, compiled by nvcc) and the torch
// binding (csrc/cuda/bindings.cpp). Plain structs of raw pointers; no torch, no CUDA headers.
//
// Dimension legend: T time steps, B batch, I input features, H hidden size, P projection size
// (LSTM proj_size; P = H without it), G gates (4 for LSTM in order i, f, g, o; 3 for GRU in
// order r, z, n; 1 for the Elman RNN). All tensors are dense row-major (C
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

// The cells (cell_math.cuh has their math and traits): torch's nn.RNNBase modes.
enum class Cell : int { kLstm = 0, kGru = 1, kRnnTanh = 2, kRnnRelu = 3 };

// G of a cell (the trait's C::G, for code that holds a Cell value).
constexpr int gates_of(Cell c) { return c == Cell::kLstm ? 4 : c == Cell::kGru ? 3 : 1; }

// ---------------------------------------------------------------------------------------------
// General path: per time step, a GEMM (done by the caller through cuBLAS) and one of these
// fused pointwise kernels. One thread per (b, j). Each launcher enqueues one kernel on
// `stream` (a cudaStream_t) and returns "" or the CUDA error text of the launch.
// G = 4 (LSTM), 3 (GRU), 1 (RNN). H here is the cell's hidden size; with LSTM proj_size the
// recurrent state h is the projection r W_hr^T (P wide) and the pointwise kernel sees r.
// ---------------------------------------------------------------------------------------------

struct FwdStep {
  DType io;
  int B, H, t;
  const void* xp_t;   // (B, G*H) acc: x[t] W_ih^T + b_ih (+ b_hh, except GRU)
  const void* pre;    // (B, G*H) acc: h_{t-1} W_hh^T
  const void* b_hh;   // GRU: (3H,) acc or null, added to pre; other cells: null (folded in xp_t)
  void* h;            // (B, H) acc, in/out: h_{t-1} in, h_t out (frozen where invalid). LSTM
                      // with proj: out only, r_t = o * tanh(c_t) (stale where invalid)
  void* c;            // LSTM: (B, H) acc, in/out: c_{t-1} in, c_t out (frozen where invalid)
  void* y_t;          // (B, H) io: y[t]; null for LSTM with proj (launch_proj_fwd_step writes y)
  void* gates_t;      // LSTM / GRU: (B, G*H) acc: post-activation gates of step t; null = not
                      // saved. RNN: null (h_t = y[t] is all its backward needs)
  void* aux_t;        // (B, H) acc: LSTM c_t, GRU W_hn h_{t-1} + b_hn; null exactly when gates_t is
  const int64_t* lengths;  // (B,) or null
};

struct BwdStep {
  DType io;
  int B, H, t;
  const void* gates_t;  // LSTM / GRU: (B, G*H) acc: saved gates of step t; RNN: null
  const void* aux_t;    // LSTM: saved c_t; GRU: saved W_hn h_{t-1} + b_hn; (B, H) acc. RNN: null
  const void* c_prev;   // LSTM: (B, H) acc: c_{t-1} (saved aux[t-1], or c0 in acc at t = 0)
  const void* h_prev;   // GRU: (B, H) io: y[t-1], or h0 at t = 0; others: null
  const void* y_t;      // RNN: (B, H) io: h_t = y[t]; others: null
  const void* dy_t;     // (B, H) io: dy[t] (ignored where invalid); null when dh already holds
                        // all of dL/dh_t (LSTM with proj)
  void* dh;   // (B, H) acc, in/out: dL/dh_t from later steps in; where valid, the part of
              // dL/dh_{t-1} that bypasses W_hh out (GRU dh * z, else 0): the caller then adds
              // dgh_t W_hh; unchanged where invalid
  void* dc;   // LSTM: (B, H) acc, in/out: dL/dc_t in, dL/dc_{t-1} out (unchanged where invalid)
  void* dxp_t;  // (B, G*H) acc out: dL/d(x[t] W_ih^T + b_ih); 0 where invalid
  void* dgh_t;  // GRU: (B, 3H) acc out: dL/d(h_{t-1} W_hh^T + b_hh); 0 where invalid. Other
                // cells: null (the gradient equals dxp_t)
  const int64_t* lengths;
};

std::string launch_fwd_step(Cell cell, const FwdStep& p, void* stream);
std::string launch_bwd_step(Cell cell, const BwdStep& p, void* stream);

// LSTM with proj_size P: the masked hand-over around the projection GEMM, one thread per (b, k),
// k < P.
struct ProjFwdStep {
  DType io;
  int B, P, t;
  const void* hp;  // (B, P) acc: r_t W_hr^T
  void* h;         // (B, P) acc, in/out: hp where valid, unchanged (frozen) where invalid
  void* y_t;       // (B, P) io: y[t] = hp where valid, 0 where invalid
  const int64_t* lengths;
};

struct ProjBwdStep {
  DType io;
  int B, P, t;
  const void* dy_t;  // (B, P) io: dy[t] (ignored where invalid)
  void* dh;          // (B, P) acc, in/out: dL/dh_t from later steps in; 0 where valid out (the
                     // caller adds dpre_t W_hh), unchanged where invalid
  void* dhp_t;       // (B, P) acc out: all of dL/dh_t where valid, 0 where invalid
  const int64_t* lengths;
};

std::string launch_proj_fwd_step(const ProjFwdStep& p, void* stream);
std::string launch_proj_bwd_step(const ProjBwdStep& p, void* stream);

// ---------------------------------------------------------------------------------------------
// Persistent path (forward): one cooperative kernel runs all T steps. Each block owns a slice
// of hidden units and keeps those units' rows of W_hh in shared memory for the whole sequence;
// h_t is exchanged through `hbuf` behind a grid-wide barrier each step.
// ---------------------------------------------------------------------------------------------

struct PersistentFwd {
  Cell cell;
  DType io;          // kF32, kF16 or kBF16 (kF64 is never persistent)
  int T, B, H;
  const float* xp;   // (T, B, G*H) float: x W_ih^T + b_ih (+ b_hh, except GRU)
  const void* w_hh;  // (G*H, H) io
  const float* b_hh;  // GRU: (3H,) float or null; other cells: must be null (folded into xp)
  const void* h0;    // (B, H) io
  const void* c0;    // LSTM: (B, H) io; others: null
  const int64_t* lengths;  // (B,) or null
  void* y;           // (T, B, H) io
  void* hn;          // (B, H) io
  void* cn;          // LSTM: (B, H) io; others: null
  float* gates;      // LSTM / GRU: (T, B, G*H) float or null (not saved); RNN: null
  float* aux;        // LSTM: cs (T, B, H); GRU: ghn (T, B, H); float; null iff gates is null
  float* hbuf;       // (2, B, H) float workspace, no other use; contents on entry ignored
  bool tensor_cores;  // fp16 / bf16 with H % 16 == 0: recurrent matvec on tensor cores, h
                      // rounded to io for the product (state and gate math stay fp32)
};

enum class Status : int { kOk = 0, kNotApplicable = 1, kError = 2 };

struct LaunchResult {
  Status status;
  std::string message;  // why not applicable, or the CUDA error; empty when kOk
};

// Plans and launches. kNotApplicable (nothing was launched, no CUDA error left pending) when the
// slice of W_hh does not fit in shared memory, when the device cannot co-schedule the grid, when
// any CUDA query of the planning fails, or for fp64: the caller then runs the general path.
// `device` is the CUDA ordinal the stream belongs to.
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
  const float* gates;  // LSTM / GRU: (T, B, G*H) float: the forward's saved gates; RNN: null
  const float* aux;    // LSTM: cs (T, B, H); GRU: ghn (T, B, H); float. RNN: null
  const float* c0;     // LSTM: (B, H) float (c0 converted); others: null
  const void* h0;      // GRU: (B, H) io (h_prev at t = 0); others: null
  const void* y;       // GRU and RNN: (T, B, H) io (GRU: y[t-1] is h_prev; RNN: y[t] is h_t);
                       // LSTM: null
  const void* dy;      // (T, B, H) io (ignored where invalid)
  const void* dhn;     // (B, H) io
  const void* dcn;     // LSTM: (B, H) io; others: null
  const int64_t* lengths;  // (B,) or null
  float* dgh;          // out (T, B, G*H): gradient of h_{t-1} W_hh^T (+ b_hh) per step (LSTM,
                       // RNN: of all G*H pre-activations); 0 where invalid. Also read by the
                       // kernel.
  float* dxp;          // GRU out (T, B, 3H): gradient of x[t] W_ih^T + b_ih; others: null
  float* dh0;          // out (B, H) float
  float* dc0;          // LSTM out (B, H) float; others: null
};

LaunchResult launch_persistent_bwd(const PersistentBwd& p, int device, void* stream);

}  // namespace cuda
}  // namespace fused_rnn
