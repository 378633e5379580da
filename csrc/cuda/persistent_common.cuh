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

#include "cell_math.cuh"
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

// A CUDA call of the planning failed: the case is not applicable (the caller falls back to the
// general path). The error is cleared so that the fallback's own launch checks do not see it.
inline LaunchResult planning_failed(const char* what, cudaError_t e) {
  (void)cudaGetLastError();
  return {Status::kNotApplicable, cuda_error(what, e)};
}

// The planner of one kernel: fills pl and smem (dynamic shared bytes) for `sms` multiprocessors
// and at most `budget` bytes of dynamic shared memory per block, or returns false and says why.
template <class Args>
using PlanFn = bool (*)(const Args&, int sms, size_t budget, Plan& pl, size_t& smem,
                        std::string& why);

// Plans and launches kernel(args, pl) cooperatively on pl.blocks blocks of kThreads.
// The shared-memory budget is the device's opt-in limit per block minus the kernel's static
// shared memory (sm_90 kernels carry a 1 KiB reserved section), so a plan that fits the budget
// fits the launch. Every failure before the launch -- a device query, the plan, the attribute,
// the occupancy query, a grid that cannot be co-resident -- is kNotApplicable (nothing launched,
// no CUDA error pending); an error of the launch itself is kError.
template <class Args>
LaunchResult plan_and_launch(void (*kernel)(const Args, const Plan), const Args& args,
                             PlanFn<Args> plan, int device, cudaStream_t stream,
                             const char* what) {
  int sms = 0, smem_optin = 0, coop = 0;
  cudaError_t e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (e == cudaSuccess) {
    e = cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  }
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, device);
  if (e != cudaSuccess) return planning_failed("cudaDeviceGetAttribute", e);
  if (!coop) return {Status::kNotApplicable, "the device does not support cooperative launch"};
  cudaFuncAttributes attr{};
  e = cudaFuncGetAttributes(&attr, kernel);
  if (e != cudaSuccess) return planning_failed("cudaFuncGetAttributes", e);
  const size_t budget = static_cast<size_t>(smem_optin) > attr.sharedSizeBytes
                            ? static_cast<size_t>(smem_optin) - attr.sharedSizeBytes
                            : 0;
  Plan pl{};
  size_t smem = 0;
  std::string why;
  if (!plan(args, sms, budget, pl, smem, why)) {
    return {Status::kNotApplicable, why + " (" + std::to_string(smem_optin) + " B opt-in minus " +
                                        std::to_string(attr.sharedSizeBytes) + " B static)"};
  }
  e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(smem));
  if (e != cudaSuccess) return planning_failed("cudaFuncSetAttribute", e);
  int per_sm = 0;
  e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, smem);
  if (e != cudaSuccess) return planning_failed("cudaOccupancyMaxActiveBlocksPerMultiprocessor", e);
  if (per_sm * sms < pl.blocks) {
    return {Status::kNotApplicable, std::to_string(pl.blocks) + " blocks cannot be co-resident (" +
                                        std::to_string(per_sm) + " per SM x " +
                                        std::to_string(sms) + " SMs)"};
  }
  Args a = args;
  void* argv[] = {&a, &pl};
  e = cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel), dim3(pl.blocks),
                                  dim3(kThreads), argv, smem, stream);
  // Refused before anything ran (the grid is too large to be co-resident after all).
  if (e == cudaErrorCooperativeLaunchTooLarge) return planning_failed(what, e);
  if (e != cudaSuccess) return {Status::kError, cuda_error("cudaLaunchCooperativeKernel", e)};
  e = cudaGetLastError();
  if (e != cudaSuccess) return {Status::kError, cuda_error(what, e)};
  return {Status::kOk, ""};
}

// Launches the kernel of io type T for p.io (fp32, fp16, bf16; fp64 is never persistent):
// launch_typed(T{}) must return a LaunchResult.
template <class F>
LaunchResult visit_io(DType io, F&& launch_typed) {
  switch (io) {
    case DType::kF32:
      return launch_typed(float{});
    case DType::kF16:
      return launch_typed(__half{});
    case DType::kBF16:
      return launch_typed(__nv_bfloat16{});
    default:
      return {Status::kNotApplicable, "no persistent kernel for this dtype"};
  }
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
