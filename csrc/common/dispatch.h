// dtype dispatch and the accumulate type: fp16/bf16 compute in float, float in float, double in double.
#pragma once
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#define FASTGAN_DISPATCH_FLOATING(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, TYPE, NAME, __VA_ARGS__)

#if defined(__CUDACC__)
#define FASTGAN_HD __host__ __device__ __forceinline__
#else
#define FASTGAN_HD inline
#endif

namespace fastgan {
template <typename T>
using acc_t = at::opmath_type<T>;
}  // namespace fastgan
