// Registers the CPU kernels (kernels.h) with the dispatcher, each behind a check of the CPU it
// runs on. Compiled for the baseline ISA (setup.py), like everything that runs at import time or
// before that check: the registration code and the boxing wrappers that the dispatcher calls
// first. Only after the check does control enter the AVX2+FMA kernel translation units, so on a
// CPU without AVX2 the ops raise an error that says why instead of dying of SIGILL, and
// fused_rnn's auto policy runs torch's own op there.
#include <torch/library.h>

#include "isa.h"
#include "kernels.h"

namespace fused_rnn::cpu {
namespace {

template <auto Fn>
struct Checked;

template <typename R, typename... Args, R (*Fn)(Args...)>
struct Checked<Fn> {
  static R call(Args... args) {
    TORCH_CHECK(cpu_has_avx2_fma(),
                "fused_rnn's CPU kernels need AVX2 and FMA, which this CPU (", isa_choice().host,
                ") lacks; use backend=\"native\" (torch's own op), which auto picks here");
    return Fn(args...);
  }
};

}  // namespace
}  // namespace fused_rnn::cpu

TORCH_LIBRARY_IMPL(fused_rnn, CPU, m) {
  using namespace fused_rnn::cpu;
  m.impl("lstm_fwd", &Checked<&lstm_fwd>::call);
  m.impl("lstm_bwd", &Checked<&lstm_bwd>::call);
  m.impl("gru_fwd", &Checked<&gru_fwd>::call);
  m.impl("gru_bwd", &Checked<&gru_bwd>::call);
  m.impl("rnn_fwd", &Checked<&rnn_fwd>::call);
  m.impl("rnn_bwd", &Checked<&rnn_bwd>::call);
}
