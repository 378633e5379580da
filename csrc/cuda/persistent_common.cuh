// Pieces shared by the persistent kernels (persistent.cu forward, persistent_bwd.cu backward):
// block geometry, vector loads, the warp reduction, the CUDA-core matvec and the cooperative
// launch. Torch-free; included by .cu files only.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "launchers.h"

namespace fused_rnn {
namespace cuda {
namespace persistent {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kRows = 4;     // rows of W_hh per warp tile
constexpr int kBatch = 8;    // batch rows per warp tile; kRows * kBatch == 32 (one per lane)
static_assert(kRows * kBatch == 32, "the shuffle reduction hands one tile element to each lane");

// Launch geometry, computed on the host (plan()).
struct Plan {
  int J;       // hidden units per block
  int Mp;      // rows of the block's weight slice in shared memory, padded with zero rows to a
               // multiple of kRows (CUDA cores) or 16 (tensor cores)
  int chunk;   // batch rows of the matvec input held in shared memory at once (multiple of 8)
  int blocks;  // ceil(H / J)
  int ldw;     // row stride of the weight slice in elements (K, or K + 8 for tensor cores)
  int ldh;     // row stride of the input rows in elements (same rule)
  int ks;      // K splits of the matvec (so that every warp has work when there are fewer
               // tiles than warps): partial sums in ks slices of (Mp, chunk)
  int kper;    // K steps per split: 128-wide (CUDA cores) or 16-wide (tensor cores)
};

template <Cell C>
__host__ __device__ constexpr int gates_of() {
  return C == Cell::kLstm ? 4 : 3;
}

// Four consecutive elements of T as float (16-byte aligned for float, 8-byte for 16-bit types).
__device__ __forceinline__ float4 load4(const float* p) { return *reinterpret_cast<const float4*>(p); }
__device__ __forceinline__ float4 load4(const __half* p) {
  const uint2 u = *reinterpret_cast<const uint2*>(p);
  const float2 a = __half22float2(*reinterpret_cast<const __half2*>(&u.x));
  const float2 b = __half22float2(*reinterpret_cast<const __half2*>(&u.y));
  return make_float4(a.x, a.y, b.x, b.y);
}
__device__ __forceinline__ float4 load4(const __nv_bfloat16* p) {
  const uint2 u = *reinterpret_cast<const uint2*>(p);
  const float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.x));
  const float2 b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.y));
  return make_float4(a.x, a.y, b.x, b.y);
}

// Sums v[0..31] over the warp; afterwards lane L's v[0] holds the warp total of element L.
// Stage S: lanes with bit S set keep the upper half of their S*2 live values and send the lower
// half to their partner, the others the reverse; 16 + 8 + 4 + 2 + 1 shuffles in all. Each stage
// is its own instantiation so every index is a compile-time constant (v stays in registers).
template <int S>
__device__ __forceinline__ void reduce_stage(float (&v)[32], int lane) {
  const bool upper = (lane & S) != 0;
#pragma unroll
  for (int i = 0; i < S; ++i) {
    const float send = upper ? v[i] : v[i + S];
    const float keep = upper ? v[i + S] : v[i];
    v[i] = keep + __shfl_xor_sync(0xffffffffu, send, S);
  }
}

__device__ __forceinline__ void warp_reduce_32(float (&v)[32], int lane) {
  reduce_stage<16>(v, lane);
  reduce_stage<8>(v, lane);
  reduce_stage<4>(v, lane);
  reduce_stage<2>(v, lane);
  reduce_stage<1>(v, lane);
}

__host__ __device__ inline size_t align16(size_t n) { return (n + 15) / 16 * 16; }

// K splits for a matvec of `tiles` (row group, batch tile) items over `ksteps` K steps: enough
// for every warp to have an item, never more than there are K steps.
inline void split_k(Plan& pl, int tiles, int ksteps) {
  pl.ks = std::max(1, std::min(kWarps / std::max(tiles, 1), ksteps));
  pl.kper = (ksteps + pl.ks - 1) / pl.ks;
}


inline std::string cuda_error(const char* what, cudaError_t e) {
  return std::string(what) + ": " + cudaGetErrorString(e);
}

struct DeviceLimits {
  int sms = 0;         // multiprocessors
  int smem_optin = 0;  // opt-in shared memory per block, bytes
};

// The device's limits; kNotApplicable without cooperative launch support.
inline LaunchResult query_device(int device, DeviceLimits& lim) {
  int coop = 0;
  cudaError_t e = cudaDeviceGetAttribute(&lim.sms, cudaDevAttrMultiProcessorCount, device);
  if (e == cudaSuccess) {
    e = cudaDeviceGetAttribute(&lim.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  }
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, device);
  if (e != cudaSuccess) return {Status::kError, cuda_error("cudaDeviceGetAttribute", e)};
  if (!coop) return {Status::kNotApplicable, "the device does not support cooperative launch"};
  return {Status::kOk, ""};
}

// Launches kernel(args, pl) cooperatively on pl.blocks blocks of kThreads with smem bytes of
// dynamic shared memory, after checking that the whole grid can be co-resident (else
// kNotApplicable, nothing launched). Every CUDA error comes back as kError.
template <class Args>
LaunchResult cooperative_launch(void (*kernel)(const Args, const Plan), const Args& args,
                                const Plan& pl, size_t smem, const DeviceLimits& lim,
                                cudaStream_t stream, const char* what) {
  cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(smem));
  if (e != cudaSuccess) return {Status::kError, cuda_error("cudaFuncSetAttribute", e)};
  int per_sm = 0;
  e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, smem);
  if (e != cudaSuccess) return {Status::kError, cuda_error("cudaOccupancyMaxActiveBlocks", e)};
  if (per_sm * lim.sms < pl.blocks) {
    return {Status::kNotApplicable, std::to_string(pl.blocks) + " blocks cannot be co-resident (" +
                                        std::to_string(per_sm) + " per SM x " +
                                        std::to_string(lim.sms) + " SMs)"};
  }
  Args a = args;
  Plan p = pl;
  void* argv[] = {&a, &p};
  e = cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel), dim3(pl.blocks),
                                  dim3(kThreads), argv, smem, stream);
  if (e != cudaSuccess) return {Status::kError, cuda_error("cudaLaunchCooperativeKernel", e)};
  e = cudaGetLastError();
  if (e != cudaSuccess) return {Status::kError, cuda_error(what, e)};
  return {Status::kOk, ""};
}

// out_s[s] (Mp, chunk) = w_s (Mp rows, K long, stride ldw) x_s^T over K split s (x_s: rows of K
// floats, stride ldh), on CUDA cores: work items are (4-row group, 8-batch tile, K split); lanes
// split the item's K range in float4 pieces, then the 31-shuffle reduction. K % 4 == 0; ntile
// 8-row tiles of x_s are valid. The caller adds the pl.ks partial sums in a fixed order.
template <class T>
__device__ __forceinline__ void matvec_fma(const T* w_s, const float* h_s, float* pre_s,
                                           const Plan& pl, int K, int ntile, int warp,
                                           int lane) {
  const int rgroups = pl.Mp / kRows;
  for (int item = warp; item < rgroups * ntile * pl.ks; item += kWarps) {
    const int s = item % pl.ks, tile = item / pl.ks;
    const int rg = tile % rgroups, tb = tile / rgroups;
    const int k_end = min(K, (s + 1) * pl.kper * 128);
    float acc[32];
#pragma unroll
    for (int i = 0; i < 32; ++i) acc[i] = 0.f;
    for (int k = s * pl.kper * 128 + lane * 4; k < k_end; k += 128) {
      float4 w[kRows];
#pragma unroll
      for (int r = 0; r < kRows; ++r) w[r] = load4(w_s + (rg * kRows + r) * pl.ldw + k);
#pragma unroll
      for (int bb = 0; bb < kBatch; ++bb) {
        const float4 h = *reinterpret_cast<const float4*>(h_s + (tb * kBatch + bb) * pl.ldh + k);
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
          float a = acc[r * kBatch + bb];
          a = fmaf(w[r].x, h.x, a);
          a = fmaf(w[r].y, h.y, a);
          a = fmaf(w[r].z, h.z, a);
          a = fmaf(w[r].w, h.w, a);
          acc[r * kBatch + bb] = a;
        }
      }
    }
    warp_reduce_32(acc, lane);
    // After the reduction lane = r * kBatch + bb.
    float* part = pre_s + static_cast<size_t>(s) * pl.Mp * pl.chunk;
    part[(rg * kRows + lane / kBatch) * pl.chunk + tb * kBatch + lane % kBatch] = acc[0];
  }
}

}  // namespace persistent
}  // namespace cuda
}  // namespace fused_rnn
