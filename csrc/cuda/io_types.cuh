// Conversions between the io dtypes (float, double, __half, __nv_bfloat16) and the acc type, for
// both nvcc and the g++ host emulation (which knows float and double only).
#pragma once

#include "cell_math.cuh"

#ifdef __CUDACC__
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

namespace fused_rnn {
namespace cuda {

// Acc<T>::type: the accumulation / state type for io type T.
template <class T>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};

FR_HD float to_acc(float v) { return v; }
FR_HD double to_acc(double v) { return v; }

template <class T>
FR_HD T from_acc(float v) {
  return static_cast<T>(v);
}
template <class T>
FR_HD T from_acc(double v) {
  return static_cast<T>(v);
}

#ifdef __CUDACC__
FR_HD float to_acc(__half v) { return __half2float(v); }
FR_HD float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }
template <>
FR_HD __half from_acc<__half>(float v) {
  return __float2half_rn(v);
}
template <>
FR_HD __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
#endif

}  // namespace cuda
}  // namespace fused_rnn
