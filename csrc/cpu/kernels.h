// The CPU op entry points (defined in the kernel translation units lstm.cpp, gru.cpp, rnn.cpp,
// which are
// compiled for AVX2+FMA; see setup.py) and registered by dispatch.cpp, a baseline-ISA unit that
// checks the CPU before calling them. Arguments and results: fused_rnn.h and fused_rnn/ops.py.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace fused_rnn::cpu {

using at::Tensor;

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_fwd(
    const Tensor& x, const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
    const std::optional<Tensor>& b_ih, const std::optional<Tensor>& b_hh,
    const std::optional<Tensor>& w_hr, const std::optional<Tensor>& lengths, bool need_saved);

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_bwd(
    const Tensor& x, const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
    const std::optional<Tensor>& w_hr, const Tensor& y, const Tensor& gates, const Tensor& cs,
    const std::optional<Tensor>& lengths, const Tensor& dy, const Tensor& dhn, const Tensor& dcn);

std::tuple<Tensor, Tensor, Tensor, Tensor> gru_fwd(
    const Tensor& x, const Tensor& h0, const Tensor& w_ih, const Tensor& w_hh,
    const std::optional<Tensor>& b_ih, const std::optional<Tensor>& b_hh,
    const std::optional<Tensor>& lengths, bool need_saved);

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> gru_bwd(
    const Tensor& x, const Tensor& h0, const Tensor& w_ih, const Tensor& w_hh, const Tensor& y,
    const Tensor& gates, const Tensor& ghn, const std::optional<Tensor>& lengths,
    const Tensor& dy, const Tensor& dhn);

std::tuple<Tensor, Tensor> rnn_fwd(const Tensor& x, const Tensor& h0, const Tensor& w_ih,
                                   const Tensor& w_hh, const std::optional<Tensor>& b_ih,
                                   const std::optional<Tensor>& b_hh,
                                   const std::optional<Tensor>& lengths, bool relu,
                                   bool need_saved);

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> rnn_bwd(
    const Tensor& x, const Tensor& h0, const Tensor& w_ih, const Tensor& w_hh, const Tensor& y,
    const std::optional<Tensor>& lengths, bool relu, const Tensor& dy, const Tensor& dhn);

}  // namespace fused_rnn::cpu
