// Deterministic block-wide sums for CUDA kernels: a fixed shuffle tree inside each warp, then the
// warp totals added in warp order by the first warp. The result depends only on the values each
// thread holds, never on timing, so a kernel that assigns elements to threads in a fixed way
// reduces to the same bits on every run.
#pragma once
#include <cuda_runtime.h>

namespace fastgan {

constexpr int kWarp = 32;

template <class T, int K>
__device__ __forceinline__ void warp_sum(T (&v)[K]) {
#pragma unroll
  for (int off = kWarp / 2; off > 0; off /= 2) {
#pragma unroll
    for (int k = 0; k < K; k++) v[k] += __shfl_down_sync(0xffffffffu, v[k], off);
  }
}

// Sums each of the K values over the block; every thread receives the totals in v.
// `smem` must hold K * 32 values of T. blockDim.x must be a multiple of 32 (at most 1024).
template <class T, int K>
__device__ __forceinline__ void block_sum(T (&v)[K], T* smem) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int nwarps = blockDim.x / kWarp;
  warp_sum<T, K>(v);
  __syncthreads();  // smem may still be read by a previous call
  if (lane == 0) {
#pragma unroll
    for (int k = 0; k < K; k++) smem[k * kWarp + warp] = v[k];
  }
  __syncthreads();
  if (warp == 0) {
#pragma unroll
    for (int k = 0; k < K; k++) v[k] = lane < nwarps ? smem[k * kWarp + lane] : T(0);
    warp_sum<T, K>(v);
    if (lane == 0) {
#pragma unroll
      for (int k = 0; k < K; k++) smem[k * kWarp] = v[k];
    }
  }
  __syncthreads();
#pragma unroll
  for (int k = 0; k < K; k++) v[k] = smem[k * kWarp];
}

}  // namespace fastgan
