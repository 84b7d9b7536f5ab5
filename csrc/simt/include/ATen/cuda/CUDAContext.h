// at::cuda's stream and device-property queries for the SIMT emulator.
#pragma once
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <cuda_runtime.h>

namespace at {
namespace cuda {
struct CUDAStream {
  cudaStream_t stream() const { return nullptr; }
  operator cudaStream_t() const { return nullptr; }
  c10::DeviceIndex device_index() const { return 0; }
};
inline CUDAStream getCurrentCUDAStream(c10::DeviceIndex = -1) { return {}; }
inline CUDAStream getDefaultCUDAStream(c10::DeviceIndex = -1) { return {}; }
inline cudaDeviceProp* getCurrentDeviceProperties() { return ::simt::device_props(); }
inline cudaDeviceProp* getDeviceProperties(c10::DeviceIndex) { return ::simt::device_props(); }
}  // namespace cuda
}  // namespace at
