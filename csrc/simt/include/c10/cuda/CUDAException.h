// C10_CUDA_CHECK and C10_CUDA_KERNEL_LAUNCH_CHECK for the SIMT emulator: an error the emulator found
// in a launch is thrown here, with its report (kernel, block, thread, source line).
#pragma once
#include <c10/util/Exception.h>
#include <cuda_runtime.h>

#define C10_CUDA_CHECK(EXPR)                                                                   \
  do {                                                                                         \
    const cudaError_t simt_err_ = (EXPR);                                                      \
    TORCH_CHECK(simt_err_ == cudaSuccess, "CUDA error: ", cudaGetErrorString(simt_err_));      \
  } while (0)
#define C10_CUDA_CHECK_WARN(EXPR)                                                              \
  do {                                                                                         \
    const cudaError_t simt_err_ = (EXPR);                                                      \
    if (simt_err_ != cudaSuccess) TORCH_WARN("CUDA warning: ", cudaGetErrorString(simt_err_)); \
  } while (0)
#define C10_CUDA_KERNEL_LAUNCH_CHECK() C10_CUDA_CHECK(cudaGetLastError())
