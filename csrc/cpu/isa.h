// Run-time choice of the CPU kernels' GEMM path, made on the machine the op runs on.
//
// One build runs on every x86-64 CPU torch supports: nothing in the extension is compiled for
// more than the baseline ISA except the AVX2+FMA panel kernel (panel_avx2.cpp), whose functions
// carry their own target attribute and are only called after the CPU was checked here.
//
// Paths:
//   avx2     the project's register-tiled AVX2+FMA panel kernel (panel_gemm.h). Chosen on CPUs
//            with AVX2 and FMA and without AVX-512: measured there at 73-76 GFLOP/s of the two
//            cores' 78 (docs/cpp_backend.md), ahead of MKL's 52-62 on the same shapes.
//   library  at::mm / addmm_ (MKL or oneDNN through ATen) on strided views. Chosen on CPUs
//            without AVX2+FMA (the panel kernel cannot run there), and on AVX-512 / AVX512-BF16 /
//            AMX CPUs: the library has kernels for those ISAs and keeps up with new CPUs, while
//            the project ships no AVX-512 kernel (none could be tested on the project's AVX2
//            machine). float64 always takes this path.
// FUSED_RNN_CPU_ISA=generic|avx2 forces a path (avx2 only where the CPU can run it; asking for
// it elsewhere falls back to library and says so); FUSED_RNN_CPU_PANEL_GEMM=0 is the older
// spelling of generic. The variables are read at every op call, so a test can switch paths.
#pragma once

#include <cstdint>
#include <string>

namespace fused_rnn::cpu {

enum class GemmPath { library, avx2 };

struct IsaChoice {
  std::string host;    // the CPU's class: "amx", "avx512_bf16", "avx512", "avx2", "avx", "sse"
  GemmPath path;       // what the kernels use now
  std::string reason;  // why, in words
};

// The host's class (detected once) and the path in effect for this call.
IsaChoice isa_choice();

// Whether the kernel translation units (compiled for AVX2+FMA) can run on this CPU.
bool cpu_has_avx2_fma();

inline bool panel_kernel_enabled() { return isa_choice().path == GemmPath::avx2; }

// The AVX2+FMA panel GEMM (panel_avx2.cpp; see panel_gemm.h for the packed layout): for every
// group g, c[:, g * width + [0, ncols)] (+)= a (m x k, row stride lda) @ the group's panels,
// `b` the first of ceil(ncols / 16) * groups consecutive packed panels. Only to be called when
// panel_kernel_enabled().
void panel_gemm_avx2(const float* a, int64_t lda, int64_t m, int64_t k, const float* b,
                     int64_t groups, int64_t width, int64_t ncols, float* c, int64_t ldc,
                     bool accumulate);

// One 16-column panel of op(W) = W^T packed from `rows` (<= 16) consecutive rows of W (each `k`
// contiguous floats, starting at `src`): out[kk * 16 + j] = src[j * k + kk], zeros for
// j >= rows. `out` is 32-byte aligned. Only to be called when panel_kernel_enabled().
void pack_panel_transposed_avx2(const float* src, int64_t k, int64_t rows, float* out);

}  // namespace fused_rnn::cpu
