// CPU detection and the GEMM path choice (isa.h), and the op fused_rnn::cpu_isa() that reports
// it to Python (`python -m fused_rnn`, fused_rnn.cpu_policy).
#include "isa.h"

#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <tuple>

namespace fused_rnn::cpu {
namespace {

struct Host {
  std::string name;
  bool avx2_fma;  // the panel kernel can run
};

Host detect() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  const bool avx2_fma = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl");
  std::string name = "sse";
  if (__builtin_cpu_supports("avx")) name = "avx";
  if (avx2_fma) name = "avx2";
  if (avx512) name = "avx512";
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11
  if (avx512 && __builtin_cpu_supports("avx512bf16")) name = "avx512_bf16";
  if (avx512 && __builtin_cpu_supports("amx-tile")) name = "amx";
#endif
  return {name, avx2_fma};
#else
  return {"non-x86", false};
#endif
}

const Host& host() {
  static const Host h = detect();
  return h;
}

bool env_is(const char* var, const char* value) {
  const char* v = std::getenv(var);
  return v != nullptr && std::strcmp(v, value) == 0;
}

}  // namespace

bool cpu_has_avx2_fma() { return host().avx2_fma; }

IsaChoice isa_choice() {
  const Host& h = host();
  const char* forced = std::getenv("FUSED_RNN_CPU_ISA");
  if ((forced != nullptr && std::strcmp(forced, "generic") == 0) ||
      env_is("FUSED_RNN_CPU_PANEL_GEMM", "0")) {
    return {h.name, GemmPath::library, "forced by the environment (FUSED_RNN_CPU_ISA=generic)"};
  }
  if (forced != nullptr && std::strcmp(forced, "avx2") == 0) {
    if (h.avx2_fma) return {h.name, GemmPath::avx2, "forced by FUSED_RNN_CPU_ISA=avx2"};
    return {h.name, GemmPath::library,
            "FUSED_RNN_CPU_ISA=avx2 asked, but this CPU lacks AVX2+FMA: library GEMM"};
  }
  if (!h.avx2_fma) {
    return {h.name, GemmPath::library, "no AVX2+FMA: library GEMM (ATen's at::mm)"};
  }
  if (h.name != "avx2") {
    return {h.name, GemmPath::library,
            h.name + " CPU: library GEMM (ATen's at::mm: MKL / oneDNN kernels for this ISA); "
                     "the project's panel kernel is AVX2-only"};
  }
  return {h.name, GemmPath::avx2,
          "AVX2+FMA without AVX-512: the project's AVX2 panel kernel (measured faster than MKL "
          "here)"};
}

namespace {

std::tuple<std::string, std::string, std::string> cpu_isa_op() {
  const IsaChoice c = isa_choice();
  return {c.host, c.path == GemmPath::avx2 ? "avx2" : "library", c.reason};
}

}  // namespace
}  // namespace fused_rnn::cpu

// (host class, GEMM path "avx2" | "library", reason) for this process, now.
TORCH_LIBRARY_FRAGMENT(fused_rnn, m) {
  m.def("cpu_isa() -> (str host, str path, str reason)", &fused_rnn::cpu::cpu_isa_op);
}
