// Argument checks shared by every op: each message names the argument and what was expected.
#pragma once
#include <ATen/ATen.h>

#define FASTGAN_CHECK_ARG(cond, arg, ...) \
  TORCH_CHECK(cond, "fastgan: argument '", arg, "': ", __VA_ARGS__)

namespace fastgan {

inline void check_floating(const at::Tensor& t, const char* arg) {
  FASTGAN_CHECK_ARG(at::isFloatingType(t.scalar_type()), arg,
                    "expected a floating-point tensor (float32, float16, bfloat16, float64), got ",
                    t.scalar_type());
}

inline void check_same_device(const at::Tensor& t, const at::Tensor& ref, const char* arg,
                              const char* ref_arg) {
  FASTGAN_CHECK_ARG(t.device() == ref.device(), arg, "expected a tensor on ", ref.device(),
                    " (the device of '", ref_arg, "'), got one on ", t.device());
}

inline void check_same_dtype(const at::Tensor& t, const at::Tensor& ref, const char* arg,
                             const char* ref_arg) {
  FASTGAN_CHECK_ARG(t.scalar_type() == ref.scalar_type(), arg, "expected dtype ",
                    ref.scalar_type(), " (the dtype of '", ref_arg, "'), got ", t.scalar_type());
}

// Wrap a dimension index into [0, ndim), with an error naming the argument.
inline int64_t wrap_dim(int64_t dim, int64_t ndim, const char* arg) {
  FASTGAN_CHECK_ARG(ndim > 0 ? (dim >= -ndim && dim < ndim) : false, arg,
                    "dimension out of range (expected to be in [", -ndim, ", ", ndim - 1,
                    "] for a ", ndim, "-D tensor), got ", dim);
  return dim < 0 ? dim + ndim : dim;
}

}  // namespace fastgan
