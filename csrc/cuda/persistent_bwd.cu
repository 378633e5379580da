// Persistent backward kernel: one cooperative launch runs the whole reverse-time recurrence of a
// layer of any cell (written once over the cell traits of cell_math.cuh) and writes the pre-activation gradients of every step; the weight, input
// and bias gradients are then single GEMMs over all steps (bindings.cpp). Torch-free. Shapes
// and aliasing of the arguments: launchers.h (PersistentBwd). Opt-in (FUSED_RNN_CUDA_BWD=
// persistent) until it has passed the GPU tests.
//
// Legend: T steps, B batch, H hidden, G gates, J hidden units owned by one block, Jp = J padded
// to a multiple of 4. "dgh" is the gradient of the hidden-side pre-activations h_{t-1} W_hh^T
// (+ b_hh): for LSTM / RNN that is the gradient of all G*H pre-activations, for GRU
// (r, z, W_hn h + b_hn).
//
// Work split. Block k owns hidden units j0 = k*J ... j0+J-1 and keeps the J COLUMNS of W_hh for
// them in shared memory (as Jp rows of G*H: w_s[jj][r] = W_hh[r][j0 + jj]), so that it can form
// (dgh_t W_hh)[:, its units] = the recurrent part of dL/dh_{t-1} for its units. Per phase
// t = T-1, ..., 0, -1:
//   1. (t < T-1) load dgh[t+1] (B, G*H), written by all blocks in the previous phase, into shared
//      memory in batch chunks and add dgh[t+1] W_hh[:, own units] to the carried gradient S;
//   2. (t >= 0) gate backward (cell_math.cuh) for the owned units: dh = S + dy[t]; write dgh[t]
//      (and GRU's input-side dxp[t]); S becomes 0 (LSTM, RNN) or dh * z (GRU); LSTM's dc is carried
//      in shared memory. Padded steps (t >= lengths[b]) write zeros and leave S, dc untouched.
//      (t = -1) write dh0 = S and dc0;
//   3. grid-wide barrier: dgh[t] is complete before phase t-1 reads it.
// dgh itself is the exchange buffer: phase t writes slice t and reads slice t+1.
#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <string>

#include "cell_math.cuh"
#include "io_types.cuh"
#include "launchers.h"
#include "persistent_common.cuh"

namespace fused_rnn {
namespace cuda {
namespace {

using namespace persistent;
namespace cg = cooperative_groups;

// Shared-memory layout, in this order (each part 16-byte aligned):
//   w_s   (Jp, G*H) T        w_s[jj][r] = W_hh[r][j0 + jj]; zero rows beyond the block's units
//   x_s   (chunk, G*H) float a chunk of batch rows of dgh[t+1]
//   rec_s (ks, Jp, chunk) float  (dgh[t+1] W_hh)[:, own units] of the chunk, transposed, one
//                                partial sum per K split
//   s_s   (J, B) float       carried dL/dh of the owned units
//   dc_s  (J, B) float       LSTM: carried dL/dc of the owned units (absent for other cells)
template <class T, class C>
size_t bwd_smem_bytes(const Plan& pl, int B, int H) {
  const size_t GH = static_cast<size_t>(C::G) * H;
  size_t n = align16(sizeof(T) * pl.Mp * GH);
  n += align16(sizeof(float) * pl.chunk * GH);
  n += align16(sizeof(float) * pl.ks * pl.Mp * pl.chunk);
  n += align16(sizeof(float) * pl.J * B) * (C::kCellState ? 2 : 1);
  return n;
}

template <class T, class C>
__global__ void __launch_bounds__(kThreads, 1) persistent_bwd_kernel(const PersistentBwd p,
                                                                      const Plan pl) {
  constexpr int G = C::G;
  const int B = p.B, H = p.H, J = pl.J, Jp = pl.Mp, CH = pl.chunk;
  const int GH = G * H;
  const int j0 = blockIdx.x * J;
  const int nj = min(J, H - j0);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

  extern __shared__ __align__(16) unsigned char smem[];
  T* w_s = reinterpret_cast<T*>(smem);
  float* x_s = reinterpret_cast<float*>(smem + align16(sizeof(T) * Jp * GH));
  float* rec_s = x_s + align16(sizeof(float) * CH * GH) / sizeof(float);
  float* s_s = rec_s + align16(sizeof(float) * pl.ks * Jp * CH) / sizeof(float);
  float* dc_s = s_s + align16(sizeof(float) * J * B) / sizeof(float);

  // Columns of W_hh for the owned units (strided reads, once).
  const T* w_hh = static_cast<const T*>(p.w_hh);
  for (int64_t e = tid; e < static_cast<int64_t>(Jp) * GH; e += kThreads) {
    const int jj = static_cast<int>(e / GH), r = static_cast<int>(e % GH);
    w_s[e] = jj < nj ? w_hh[static_cast<int64_t>(r) * H + j0 + jj] : from_acc<T>(0.0f);
  }
  for (int e = tid; e < nj * B; e += kThreads) {
    const int jj = e % nj, b = e / nj;
    const int64_t s = static_cast<int64_t>(b) * H + j0 + jj;
    s_s[jj * B + b] = to_acc(static_cast<const T*>(p.dhn)[s]);
    if constexpr (C::kCellState) dc_s[jj * B + b] = to_acc(static_cast<const T*>(p.dcn)[s]);
  }
  __syncthreads();
  cg::grid_group grid = cg::this_grid();

  const T* dy = static_cast<const T*>(p.dy);
  for (int t = p.T - 1; t >= -1; --t) {
    const bool has_rec = t < p.T - 1;
    for (int b0 = 0; b0 < B; b0 += CH) {
      const int nb = min(CH, B - b0);
      const int ntile = (nb + kBatch - 1) / kBatch;
      if (has_rec) {
        // 1. dgh[t+1] rows b0 .. b0+nb-1 from L2 (other blocks wrote them), zero-padded tile.
        const float* src = p.dgh + (static_cast<int64_t>(t + 1) * B + b0) * GH;
        for (int e = tid; e < ntile * kBatch * (GH / 4); e += kThreads) {
          const int bb = e / (GH / 4), k = (e % (GH / 4)) * 4;
          float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
          if (bb < nb) v = __ldcg(reinterpret_cast<const float4*>(src + static_cast<int64_t>(bb) * GH + k));
          *reinterpret_cast<float4*>(x_s + bb * GH + k) = v;
        }
        __syncthreads();
        matvec_fma<T>(w_s, x_s, rec_s, pl, GH, ntile, warp, lane);
        __syncthreads();
      }
      // 2. Gate backward of the owned units for this batch chunk.
      for (int e = tid; e < nj * nb; e += kThreads) {
        const int jj = e % nj, bl = e / nj;
        const int b = b0 + bl, j = j0 + jj;
        const int64_t s = static_cast<int64_t>(b) * H + j;
        float S = s_s[jj * B + b];
        if (has_rec) {
          for (int k = 0; k < pl.ks; ++k) S += rec_s[(k * Jp + jj) * CH + bl];
        }
        if (t < 0) {
          p.dh0[s] = S;
          if constexpr (C::kCellState) p.dc0[s] = dc_s[jj * B + b];
          continue;
        }
        const int64_t ts = static_cast<int64_t>(t) * B * H + s;           // (T, B, H)
        const int64_t tg = (static_cast<int64_t>(t) * B + b) * GH + j;    // (T, B, G*H), gate 0
        const bool valid = p.lengths == nullptr || static_cast<int64_t>(t) < p.lengths[b];
        if (!valid) {
          for (int g = 0; g < G; ++g) p.dgh[tg + g * H] = 0.f;
          if constexpr (C::kBiasApart) {
            for (int g = 0; g < G; ++g) p.dxp[tg + g * H] = 0.f;
          }
          s_s[jj * B + b] = S;
          continue;
        }
        const int64_t prev = ts - static_cast<int64_t>(B) * H;  // (t-1, b, j)
        const T* y = static_cast<const T*>(p.y);
        float act[G], dx[G], dhw[G];
        float aux = 0.f, c_prev = 0.f, h_prev = 0.f, dc = 0.f;
        if constexpr (C::kSavesGates) {
#pragma unroll
          for (int g = 0; g < G; ++g) act[g] = p.gates[tg + g * H];
          aux = p.aux[ts];
        } else {
          act[0] = to_acc(y[ts]);  // RNN: h_t
        }
        if constexpr (C::kCellState) {
          c_prev = t > 0 ? p.aux[prev] : p.c0[s];
          dc = dc_s[jj * B + b];
        }
        if constexpr (C::kBiasApart) {
          h_prev = to_acc(t > 0 ? y[prev] : static_cast<const T*>(p.h0)[s]);
        }
        s_s[jj * B + b] = C::bwd(act, aux, c_prev, h_prev, S + to_acc(dy[ts]), dc, dx, dhw);
        if constexpr (C::kCellState) dc_s[jj * B + b] = dc;
#pragma unroll
        for (int g = 0; g < G; ++g) {
          p.dgh[tg + g * H] = dhw[g];
          if constexpr (C::kBiasApart) p.dxp[tg + g * H] = dx[g];
        }
      }
      __syncthreads();  // x_s and rec_s are reused by the next chunk
    }
    if (t >= 0) grid.sync();  // dgh[t] complete before phase t-1 reads it
  }
}

// Launch geometry (a PlanFn, persistent_common.cuh).
template <class T, class C>
bool plan_bwd(const PersistentBwd& p, int sms, size_t budget, Plan& pl, size_t& smem,
              std::string& why) {
  pl.J = (p.H + sms - 1) / sms;
  pl.blocks = (p.H + pl.J - 1) / pl.J;
  pl.Mp = (pl.J + kRows - 1) / kRows * kRows;
  pl.ldw = pl.ldh = C::G * p.H;
  for (pl.chunk = (p.B + kBatch - 1) / kBatch * kBatch; pl.chunk >= kBatch; pl.chunk -= kBatch) {
    split_k(pl, (pl.Mp / kRows) * (pl.chunk / kBatch), (pl.ldw + 127) / 128);
    smem = bwd_smem_bytes<T, C>(pl, p.B, p.H);
    if (smem <= budget) return true;
  }
  why = "the W_hh columns and 8 rows of dgh need " + std::to_string(smem) +
        " bytes of shared memory per block, more than the " + std::to_string(budget) + " B budget";
  return false;
}

}  // namespace

LaunchResult launch_persistent_bwd(const PersistentBwd& p, int device, void* stream) {
  if (p.T < 1 || p.B < 1 || p.H < 1) return {Status::kError, "T, B and H must be >= 1"};
  if (p.H % 4 != 0) return {Status::kNotApplicable, "H is not a multiple of 4"};
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  return visit_cell(p.cell, [&](auto c) {
    using C = decltype(c);
    return visit_io(p.io, [&](auto io) {
      using T = decltype(io);
      return plan_and_launch(persistent_bwd_kernel<T, C>, p, plan_bwd<T, C>, device, s,
                             "persistent backward kernel");
    });
  });
}

}  // namespace cuda
}  // namespace fused_rnn
