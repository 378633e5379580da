// The fused_rnn op schemas (declared once for every device), the argument checks shared by the
// device implementations, and the Python module stub that lets `import fused_rnn._C` load this
// library (which runs the registrations below). No pybind: the ops are reached through
// torch.ops.fused_rnn.*, so the extension builds against Python's limited API.
#include <Python.h>

#include <torch/library.h>

#include <sstream>

#include "fused_rnn.h"

extern "C" {
// An empty module: importing it is what loads the shared library and its registrations.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",  // name
      nullptr,  // no docstring
      -1,  // no per-module state
      nullptr,  // no methods: everything is under torch.ops.fused_rnn
  };
  return PyModule_Create(&module_def);
}
}

namespace fused_rnn {

at::ScalarType acc_dtype(at::ScalarType dtype) {
  return (dtype == at::kHalf || dtype == at::kBFloat16) ? at::kFloat : dtype;
}

namespace {

std::string shape_str(at::IntArrayRef shape) {
  std::ostringstream s;
  s << "(";
  for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
  s << (shape.size() == 1 ? ",)" : ")");
  return s.str();
}

}  // namespace

void check_tensor(const char* op, const char* name, const at::Tensor& t, at::IntArrayRef shape,
                  at::ScalarType dtype, const at::Tensor& x) {
  TORCH_CHECK(t.defined(), op, ": ", name, " is undefined");
  TORCH_CHECK(t.sizes() == shape, op, ": ", name, " must have shape ", shape_str(shape),
              ", got ", shape_str(t.sizes()));
  TORCH_CHECK(t.scalar_type() == dtype, op, ": ", name, " must have dtype ", dtype, ", got ",
              t.scalar_type());
  TORCH_CHECK(t.device() == x.device(), op, ": ", name, " is on ", t.device(),
              " but x is on ", x.device(), "; all tensors must be on one device");
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous (call .contiguous())");
}

Dims check_inputs(const char* op, int64_t gates, const at::Tensor& x, const at::Tensor& h0,
                  const at::Tensor* c0, const at::Tensor& w_ih, const at::Tensor& w_hh,
                  const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
                  const std::optional<at::Tensor>& w_hr, const std::optional<at::Tensor>& lengths) {
  TORCH_CHECK(x.dim() == 3, op, ": x must be (T, B, I) (time-major), got ", x.dim(),
              " dimensions ", shape_str(x.sizes()));
  const auto dt = x.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble || dt == at::kHalf || dt == at::kBFloat16, op,
              ": x must be float16, bfloat16, float32 or float64, got ", dt);
  // H and P are read off w_hr (P, H) when there is a projection, else off w_hh (G*H, H).
  const at::Tensor& wh = w_hr ? *w_hr : w_hh;
  TORCH_CHECK(wh.dim() == 2, op, ": ", w_hr ? "w_hr must be (P, H)" : "w_hh must be (G*H, H)",
              " with G = ", gates, ", got ", shape_str(wh.sizes()));
  Dims d{x.size(0), x.size(1), x.size(2), wh.size(1), w_hr ? wh.size(0) : wh.size(1)};
  TORCH_CHECK(d.T >= 1 && d.B >= 1 && d.I >= 1 && d.H >= 1 && d.P >= 1, op,
              ": T, B, I, H and P must all be at least 1, got x ", shape_str(x.sizes()),
              ", H = ", d.H, " and P = ", d.P);
  check_tensor(op, "x", x, {d.T, d.B, d.I}, dt, x);
  if (w_hr) check_tensor(op, "w_hr", *w_hr, {d.P, d.H}, dt, x);
  check_tensor(op, "w_hh", w_hh, {gates * d.H, d.P}, dt, x);
  check_tensor(op, "w_ih", w_ih, {gates * d.H, d.I}, dt, x);
  check_tensor(op, "h0", h0, {d.B, d.P}, dt, x);
  if (c0) check_tensor(op, "c0", *c0, {d.B, d.H}, dt, x);
  TORCH_CHECK(b_ih.has_value() == b_hh.has_value(), op,
              ": b_ih and b_hh must both be given or both be None");
  if (b_ih) {
    check_tensor(op, "b_ih", *b_ih, {gates * d.H}, dt, x);
    check_tensor(op, "b_hh", *b_hh, {gates * d.H}, dt, x);
  }
  if (lengths) check_tensor(op, "lengths", *lengths, {d.B}, at::kLong, x);
  return d;
}

Dims check_inputs(const char* op, int64_t gates, const at::Tensor& x, const at::Tensor& h0,
                  const at::Tensor* c0, const at::Tensor& w_ih, const at::Tensor& w_hh,
                  const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
                  const std::optional<at::Tensor>& lengths) {
  return check_inputs(op, gates, x, h0, c0, w_ih, w_hh, b_ih, b_hh, std::nullopt, lengths);
}

void check_lengths_values(const char* op, const at::Tensor& lengths, int64_t T) {
  const int64_t* len = lengths.data_ptr<int64_t>();
  for (int64_t b = 0; b < lengths.numel(); ++b) {
    TORCH_CHECK(len[b] >= 1 && len[b] <= T, op, ": lengths[", b, "] = ", len[b],
                " is outside [1, T] with T = ", T);
  }
}

}  // namespace fused_rnn

// The schemas: the one list of the library's ops. fused_rnn/ops.py reads them back from the
// loaded library (its fake kernels must match their argument names) instead of spelling them
// again; shapes and dtypes are documented in fused_rnn.h and fused_rnn/ops.py.
namespace {
constexpr const char* kSchemas[] = {
    "lstm_fwd(Tensor x, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
    "Tensor? b_hh, Tensor? w_hr, Tensor? lengths, bool need_saved) "
    "-> (Tensor y, Tensor hn, Tensor cn, Tensor gates, Tensor cs)",
    "lstm_bwd(Tensor x, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor? w_hr, "
    "Tensor y, Tensor gates, Tensor cs, Tensor? lengths, Tensor dy, Tensor dhn, Tensor dcn) "
    "-> (Tensor dx, Tensor dh0, Tensor dc0, Tensor dw_ih, Tensor dw_hh, Tensor db, Tensor dw_hr)",
    "gru_fwd(Tensor x, Tensor h0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, "
    "Tensor? lengths, bool need_saved) -> (Tensor y, Tensor hn, Tensor gates, Tensor ghn)",
    "gru_bwd(Tensor x, Tensor h0, Tensor w_ih, Tensor w_hh, Tensor y, Tensor gates, "
    "Tensor ghn, Tensor? lengths, Tensor dy, Tensor dhn) "
    "-> (Tensor dx, Tensor dh0, Tensor dw_ih, Tensor dw_hh, Tensor db_ih, Tensor db_hh)",
    "rnn_fwd(Tensor x, Tensor h0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, "
    "Tensor? lengths, bool relu, bool need_saved) -> (Tensor y, Tensor hn)",
    "rnn_bwd(Tensor x, Tensor h0, Tensor w_ih, Tensor w_hh, Tensor y, Tensor? lengths, "
    "bool relu, Tensor dy, Tensor dhn) "
    "-> (Tensor dx, Tensor dh0, Tensor dw_ih, Tensor dw_hh, Tensor db)",
};
}  // namespace

TORCH_LIBRARY(fused_rnn, m) {
  for (const char* schema : kSchemas) m.def(schema);
}
