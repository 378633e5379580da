// Persistent forward kernel: one cooperative launch runs all T steps of a layer of any cell
// (written once over the cell traits of cell_math.cuh). Torch-free: compiles with nvcc alone.
// Shapes and aliasing of the arguments: launchers.h.
//
// Legend: T steps, B batch, H hidden, G gates (4 LSTM i,f,g,o; 3 GRU r,z,n; 1 RNN), J hidden
// units owned by one block, M = G*J rows of W_hh owned by one block (padded to Mp).
//
// Work split. Block k owns hidden units j0 = k*J ... j0+J-1 (the last block may own fewer) and
// the G*J rows of W_hh that produce their gates; those rows are copied to shared memory once and
// stay there for the whole sequence. The LSTM cell state c of the owned units also lives in
// shared memory. Per step t:
//   1. load h_{t-1} (B, H) float from `hbuf` (global, L2) into shared memory, a chunk of batch
//      rows at a time when all of B does not fit;
//   2. recurrent matvec W_slice h^T, in one of two variants (template kMma):
//      - CUDA cores (all dtypes): each warp computes a 4-row x 8-batch tile, lanes splitting the
//        H axis in float4 pieces; the 32 partial sums are reduced with 31 shuffles (recursive
//        halving: lane L ends up with the total of tile element L); h stays fp32; K is split
//        over warps when there are fewer tiles than warps (persistent_common.cuh);
//      - tensor cores (fp16 / bf16, H % 16 == 0, FUSED_RNN_CUDA_MMA=1): mma.sync m16n8k16 tiles
//        of 16 rows x 8 batch, h rounded to the io dtype in shared memory (as cuDNN does), fp32
//        accumulation; K is split over warps when there are fewer tiles than warps, and the
//        partial sums are added in a fixed order (deterministic);
//   3. pointwise gate math (cell_math.cuh) for the owned units, writing y[t], the saved
//      activations and h_t (fp32) into the other half of the double-buffered `hbuf`;
//   4. grid-wide barrier (cooperative groups): h_t is complete before anyone reads it.
// hbuf is double-buffered so a block that passed the barrier of step t may write h_{t+1}
// while no block can still be reading h_{t-1} (that read finished before the barrier).
//
// Requirements checked by the launcher (else kNotApplicable, the caller uses the general path):
// H % 4 == 0 (float4 loads), io not fp64, the block's W_hh slice plus one 8-row batch chunk of h
// fit in the opt-in shared memory less the kernel's static shared memory, and the grid is
// co-resident (cooperative launch). bindings.cpp does not ask for LSTM with proj_size.
#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <string>
#include <type_traits>

#include "cell_math.cuh"
#include "io_types.cuh"
#include "launchers.h"
#include "persistent_common.cuh"

namespace fused_rnn {
namespace cuda {
namespace {

using namespace persistent;
namespace cg = cooperative_groups;

// ---------------------------------------------------------------------------------------------
// Tensor-core matvec (fp16 / bf16 only): mma.sync m16n8k16, A = 16 rows of the W_hh slice,
// B = 8 batch rows of h (rounded to T, as cuDNN does), fp32 accumulators. Fragment layouts are
// those of the PTX ISA for mma.m16n8k16 with .f16 / .bf16 operands: with g = lane / 4 and
// q = lane % 4, A regs hold (row g | g+8, cols 2q, 2q+1 | +8), B regs hold (k = 2q, 2q+1 | +8,
// n = g), C holds (row g | g+8, cols 2q, 2q+1).
// ---------------------------------------------------------------------------------------------
template <class T>
__device__ __forceinline__ void mma_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                          uint32_t b1);
template <>
__device__ __forceinline__ void mma_16816<__half>(float (&c)[4], const uint32_t (&a)[4],
                                                  uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma_16816<__nv_bfloat16>(float (&c)[4], const uint32_t (&a)[4],
                                                         uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <class T>
__device__ __forceinline__ uint32_t ld_pair(const T* p) {  // two consecutive 16-bit values
  return *reinterpret_cast<const uint32_t*>(p);
}

// Four floats stored as T (h_s of the tensor-core variant; 8-byte aligned).
__device__ __forceinline__ void store4(float* p, float4 v) { *reinterpret_cast<float4*>(p) = v; }
__device__ __forceinline__ void store4(__half* p, float4 v) {
  __half2 a = __floats2half2_rn(v.x, v.y), b = __floats2half2_rn(v.z, v.w);
  *reinterpret_cast<uint2*>(p) =
      make_uint2(*reinterpret_cast<uint32_t*>(&a), *reinterpret_cast<uint32_t*>(&b));
}
__device__ __forceinline__ void store4(__nv_bfloat16* p, float4 v) {
  __nv_bfloat162 a = __floats2bfloat162_rn(v.x, v.y), b = __floats2bfloat162_rn(v.z, v.w);
  *reinterpret_cast<uint2*>(p) =
      make_uint2(*reinterpret_cast<uint32_t*>(&a), *reinterpret_cast<uint32_t*>(&b));
}

// Shared-memory layout, in this order (each part 16-byte aligned):
//   w_s   (Mp, ldw) T      rows g*J + jj = W_hh[g*H + j0 + jj, :H]; zero rows beyond the
//                          block's units; columns H..ldw-1 are padding (never read)
//   h_s   (chunk, ldh) HS  a chunk of batch rows of h_{t-1}; HS = float (FMA variant) or T
//   pre_s (ks, Mp, chunk) float  W_hh h^T of the chunk, one partial sum per K split
//   c_s   (J, B) float     LSTM cell state of the owned units (absent for other cells)
// The tensor-core variant pads rows by 8 elements (16 bytes) so the 8 rows one fragment load
// touches fall in different banks.
template <class T, class C, bool kMma>
__host__ __device__ inline size_t smem_bytes(const Plan& pl, int B) {
  using HS = typename std::conditional<kMma, T, float>::type;
  size_t n = align16(sizeof(T) * pl.Mp * pl.ldw);
  n += align16(sizeof(HS) * pl.chunk * pl.ldh);
  n += align16(sizeof(float) * pl.ks * pl.Mp * pl.chunk);
  if (C::kCellState) n += align16(sizeof(float) * pl.J * B);
  return n;
}

// pre_s[s] = W_slice h_chunk^T over K split s, on tensor cores: work items are
// (16-row tile, 8-batch tile, K split); each writes its 16x8 fp32 tile to its split's slice.
template <class T>
__device__ __forceinline__ void matvec_mma(const T* w_s, const T* h_s, float* pre_s,
                                           const Plan& pl, int H, int ntile, int warp,
                                           int lane) {
  const int tiles_m = pl.Mp / 16, ksteps = H / 16;
  const int g = lane >> 2, q = lane & 3;
  for (int item = warp; item < tiles_m * ntile * pl.ks; item += kWarps) {
    const int s = item % pl.ks, tile = item / pl.ks;
    const int tm = tile % tiles_m, tn = tile / tiles_m;
    const int kb = s * pl.kper, ke = min(ksteps, kb + pl.kper);
    const T* wa = w_s + (tm * 16 + g) * pl.ldw + 2 * q;
    const T* hb = h_s + (tn * 8 + g) * pl.ldh + 2 * q;
    float c[4] = {0.f, 0.f, 0.f, 0.f};
    for (int kk = kb; kk < ke; ++kk) {
      const int k0 = kk * 16;
      const uint32_t a[4] = {ld_pair(wa + k0), ld_pair(wa + 8 * pl.ldw + k0),
                             ld_pair(wa + k0 + 8), ld_pair(wa + 8 * pl.ldw + k0 + 8)};
      mma_16816<T>(c, a, ld_pair(hb + k0), ld_pair(hb + k0 + 8));
    }
    float* part = pre_s + static_cast<size_t>(s) * pl.Mp * pl.chunk;
    const int row = tm * 16 + g, col = tn * 8 + 2 * q;
    part[row * pl.chunk + col] = c[0];
    part[row * pl.chunk + col + 1] = c[1];
    part[(row + 8) * pl.chunk + col] = c[2];
    part[(row + 8) * pl.chunk + col + 1] = c[3];
  }
}

template <class T, class C, bool kMma>
__global__ void __launch_bounds__(kThreads, 1) persistent_fwd_kernel(const PersistentFwd p,
                                                                      const Plan pl) {
  using HS = typename std::conditional<kMma, T, float>::type;
  constexpr int G = C::G;
  const int B = p.B, H = p.H, J = pl.J, Mp = pl.Mp, CH = pl.chunk;
  const int j0 = blockIdx.x * J;
  const int nj = min(J, H - j0);  // units owned by this block (>= 1)
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

  extern __shared__ __align__(16) unsigned char smem[];
  T* w_s = reinterpret_cast<T*>(smem);
  HS* h_s = reinterpret_cast<HS*>(smem + align16(sizeof(T) * Mp * pl.ldw));
  float* pre_s = reinterpret_cast<float*>(reinterpret_cast<unsigned char*>(h_s) +
                                          align16(sizeof(HS) * CH * pl.ldh));
  float* c_s = pre_s + align16(sizeof(float) * pl.ks * Mp * CH) / sizeof(float);

  // Weights: once for the whole sequence.
  const T* w_hh = static_cast<const T*>(p.w_hh);
  for (int64_t e = tid; e < static_cast<int64_t>(Mp) * H; e += kThreads) {
    const int r = static_cast<int>(e / H), k = static_cast<int>(e % H);
    const int g = r / J, jj = r % J;
    w_s[r * pl.ldw + k] = (g < G && jj < nj)
                              ? w_hh[(static_cast<int64_t>(g) * H + j0 + jj) * H + k]
                              : from_acc<T>(0.0f);
  }
  // Initial state of the owned units: h0 -> hbuf[0] (float), c0 -> c_s.
  const T* h0 = static_cast<const T*>(p.h0);
  for (int e = tid; e < nj * B; e += kThreads) {
    const int jj = e % nj, b = e / nj;
    const int64_t s = static_cast<int64_t>(b) * H + j0 + jj;
    p.hbuf[s] = to_acc(h0[s]);
    if constexpr (C::kCellState) c_s[jj * B + b] = to_acc(static_cast<const T*>(p.c0)[s]);
  }
  cg::grid_group grid = cg::this_grid();
  grid.sync();

  T* y = static_cast<T*>(p.y);
  const int64_t GH = static_cast<int64_t>(G) * H;
  for (int t = 0; t < p.T; ++t) {
    const float* cur = p.hbuf + static_cast<int64_t>(t & 1) * B * H;
    float* nxt = p.hbuf + static_cast<int64_t>((t + 1) & 1) * B * H;
    for (int b0 = 0; b0 < B; b0 += CH) {
      const int nb = min(CH, B - b0);
      const int ntile = (nb + kBatch - 1) / kBatch;
      // 1. h_{t-1} rows b0 .. b0+nb-1 (zero rows pad the last 8-row tile). __ldcg: read from L2,
      // never from this SM's L1, which may hold the same buffer from two steps ago.
      for (int e = tid; e < ntile * kBatch * (H / 4); e += kThreads) {
        const int bb = e / (H / 4), k = (e % (H / 4)) * 4;
        float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
        if (bb < nb) {
          v = __ldcg(reinterpret_cast<const float4*>(cur + static_cast<int64_t>(b0 + bb) * H + k));
        }
        store4(h_s + bb * pl.ldh + k, v);
      }
      __syncthreads();
      // 2. Recurrent matvec of the chunk.
      if constexpr (kMma) {
        matvec_mma<T>(w_s, h_s, pre_s, pl, H, ntile, warp, lane);
      } else {
        matvec_fma<T>(w_s, h_s, pre_s, pl, H, ntile, warp, lane);
      }
      __syncthreads();
      // 3. Gate math for the owned units of this batch chunk.
      for (int e = tid; e < nj * nb; e += kThreads) {
        const int jj = e % nj, bl = e / nj;
        const int b = b0 + bl, j = j0 + jj;
        const int64_t s = static_cast<int64_t>(b) * H + j;              // (B, H)
        const int64_t ts = static_cast<int64_t>(t) * B * H + s;         // (T, B, H)
        const int64_t tg = (static_cast<int64_t>(t) * B + b) * GH + j;  // (T, B, G*H), gate 0
        // The fp32 h_{t-1}: h_s holds it rounded to T in the tensor-core variant.
        float h_prev;
        if constexpr (kMma) {
          h_prev = __ldcg(cur + s);
        } else {
          h_prev = h_s[bl * pl.ldh + j];
        }
        // Hidden-side pre-activations hw (W_hh h_{t-1} summed over the K splits, + b_hh where
        // the cell keeps it apart) and the input side x.
        float x[G], hw[G], act[G], aux;
#pragma unroll
        for (int g = 0; g < G; ++g) {
          hw[g] = 0.f;
          for (int k = 0; k < pl.ks; ++k) hw[g] += pre_s[(k * Mp + g * J + jj) * CH + bl];
          if (p.b_hh != nullptr) hw[g] += p.b_hh[g * H + j];
          x[g] = __ldg(p.xp + tg + g * H);
        }
        const bool valid = p.lengths == nullptr || static_cast<int64_t>(t) < p.lengths[b];
        float h_new = h_prev;
        if (valid) {
          float c = 0.f;
          if constexpr (C::kCellState) c = c_s[jj * B + b];
          h_new = C::fwd(x, hw, h_prev, c, act, aux);
          if constexpr (C::kCellState) c_s[jj * B + b] = c;
          if (p.gates != nullptr) {
#pragma unroll
            for (int g = 0; g < G; ++g) p.gates[tg + g * H] = act[g];
            p.aux[ts] = aux;
          }
          y[ts] = from_acc<T>(h_new);
        } else {
          y[ts] = from_acc<T>(0.0f);
          if (p.gates != nullptr) {
            for (int g = 0; g < G; ++g) p.gates[tg + g * H] = 0.f;
            p.aux[ts] = 0.f;
          }
        }
        nxt[s] = h_new;
        if (t == p.T - 1) {
          static_cast<T*>(p.hn)[s] = from_acc<T>(h_new);
          if constexpr (C::kCellState) static_cast<T*>(p.cn)[s] = from_acc<T>(c_s[jj * B + b]);
        }
      }
      __syncthreads();  // h_s and pre_s are reused by the next chunk
    }
    grid.sync();  // h_t complete in nxt before step t+1 reads it
  }
}

// Launch geometry for one variant (a PlanFn, persistent_common.cuh).
template <class T, class C, bool kMma>
bool plan(const PersistentFwd& p, int sms, size_t budget, Plan& pl, size_t& smem,
          std::string& why) {
  const int mult = kMma ? 16 : kRows;
  // One block per SM: the fewest units per block that spread H over all SMs.
  pl.J = (p.H + sms - 1) / sms;
  pl.blocks = (p.H + pl.J - 1) / pl.J;
  pl.Mp = (C::G * pl.J + mult - 1) / mult * mult;
  pl.ldw = pl.ldh = kMma ? p.H + 8 : p.H;
  // As many 8-row batch tiles of h as fit next to the weights.
  for (pl.chunk = (p.B + kBatch - 1) / kBatch * kBatch; pl.chunk >= kBatch; pl.chunk -= kBatch) {
    if (kMma) {
      split_k(pl, (pl.Mp / 16) * (pl.chunk / kBatch), p.H / 16);
    } else {
      split_k(pl, (pl.Mp / kRows) * (pl.chunk / kBatch), (p.H + 127) / 128);
    }
    smem = smem_bytes<T, C, kMma>(pl, p.B);
    if (smem <= budget) return true;
  }
  why = "the W_hh slice and 8 rows of h need " + std::to_string(smem) +
        " bytes of shared memory per block, more than the " + std::to_string(budget) + " B budget";
  return false;
}

template <class T, class C, bool kMma>
LaunchResult launch_variant(const PersistentFwd& p, int device, cudaStream_t stream) {
  return plan_and_launch(persistent_fwd_kernel<T, C, kMma>, p, plan<T, C, kMma>, device, stream,
                         "persistent forward kernel");
}

}  // namespace

LaunchResult launch_persistent_fwd(const PersistentFwd& p, int device, void* stream) {
  if (p.T < 1 || p.B < 1 || p.H < 1) return {Status::kError, "T, B and H must be >= 1"};
  if (p.H % 4 != 0) return {Status::kNotApplicable, "H is not a multiple of 4"};
  if ((p.gates == nullptr) != (p.aux == nullptr)) {
    return {Status::kError, "gates and aux must both be set or both be null"};
  }
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  // Tensor cores only for 16-bit io, when asked for and H is a whole number of 16-wide K steps.
  const bool mma = p.tensor_cores && p.H % 16 == 0 && p.io != DType::kF32;
  return visit_cell(p.cell, [&](auto c) {
    using C = decltype(c);
    return visit_io(p.io, [&](auto io) {
      using T = decltype(io);
      if constexpr (std::is_same<T, float>::value) {
        return launch_variant<T, C, false>(p, device, s);
      } else {
        return mma ? launch_variant<T, C, true>(p, device, s)
                   : launch_variant<T, C, false>(p, device, s);
      }
    });
  });
}

}  // namespace cuda
}  // namespace fused_rnn
