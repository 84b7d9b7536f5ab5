// Gradient penalties on CUDA.
//
// Forward, two launches: (1) a grid of (chunks, samples) blocks writes the sum of squares of each
// chunk of each sample; (2) one block adds the chunks of each sample in chunk order, takes norms,
// and reduces the penalty with a fixed tree. Deterministic, no atomics, no host sync. (The gradient
// w.r.t. images is ~MBs, too much for one block; finishing in the first launch would need a global
// counter and atomics.)
// Backward, one launch over the same grid: out = s_i * g, with s_i from the norms and the incoming
// gradient read on the device.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

#include "common/block_reduce.cuh"
#include "common/vmath.h"
#include "gan_loss/penalty.h"

namespace fastgan {
namespace penalty {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kChunk = kThreads * 8;  // elements per block
constexpr int64_t kMaxGridY = 65535;

struct Grid {
  int64_t chunks;
  dim3 grid;
};

inline Grid make_grid(int64_t N, int64_t M) {
  Grid g;
  g.chunks = std::max<int64_t>(1, (M + kChunk - 1) / kChunk);
  TORCH_CHECK(g.chunks <= INT32_MAX, "fastgan: argument 'g': samples of ", M, " elements are too large");
  g.grid = dim3(unsigned(g.chunks), unsigned(std::min<int64_t>(N, kMaxGridY)));
  return g;
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
partial_kernel(const scalar_t* __restrict__ g, acc_t<scalar_t>* __restrict__ partial, int64_t N, int64_t M,
               int64_t chunks) {
  using acc = acc_t<scalar_t>;
  __shared__ acc smem[kWarp];
  const int64_t c = blockIdx.x;
  const int64_t begin = c * kChunk, end = std::min<int64_t>(M, begin + kChunk);
  for (int64_t i = blockIdx.y; i < N; i += gridDim.y) {
    const scalar_t* p = g + i * M;
    acc v[1] = {0};
    for (int64_t k = begin + threadIdx.x; k < end; k += blockDim.x) {
      const acc x = acc(p[k]);
      v[0] += x * x;
    }
    block_sum<acc, 1>(v, smem);
    if (threadIdx.x == 0) partial[i * chunks + c] = v[0];
  }
}

template <typename acc>
__global__ void __launch_bounds__(kThreads)
finish_kernel(const acc* __restrict__ partial, acc* __restrict__ norms, acc* __restrict__ pen, int64_t N,
              int64_t chunks, acc center, acc weight, bool squared) {
  __shared__ acc smem[kWarp];
  acc v[1] = {0};
  for (int64_t i = threadIdx.x; i < N; i += blockDim.x) {
    acc sq = 0;
    for (int64_t c = 0; c < chunks; c++) sq += partial[i * chunks + c];
    const acc n = vmath::sqrt_(sq);
    norms[i] = n;
    v[0] += squared ? sq : (n - center) * (n - center);
  }
  block_sum<acc, 1>(v, smem);
  if (threadIdx.x == 0) *pen = weight / acc(N) * v[0];
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
scale_kernel(const acc_t<scalar_t>* __restrict__ grad, const scalar_t* __restrict__ g,
             const acc_t<scalar_t>* __restrict__ norms, scalar_t* __restrict__ out, int64_t N, int64_t M,
             acc_t<scalar_t> center, acc_t<scalar_t> weight, bool squared) {
  using acc = acc_t<scalar_t>;
  const int64_t c = blockIdx.x;
  const int64_t begin = c * kChunk, end = std::min<int64_t>(M, begin + kChunk);
  const acc base = acc(2) * weight * (*grad) / acc(N);
  for (int64_t i = blockIdx.y; i < N; i += gridDim.y) {
    const acc n = norms[i];
    const acc s = squared ? base : (n > acc(0) ? base * (acc(1) - center / n) : acc(0));
    for (int64_t k = begin + threadIdx.x; k < end; k += blockDim.x) {
      out[i * M + k] = scalar_t(s * acc(g[i * M + k]));
    }
  }
}

struct CudaKernels {
  static void forward(const at::Tensor& g, at::Tensor& norms, at::Tensor& pen, double center,
                      double weight, bool squared) {
    const int64_t N = g.size(0), M = g.numel() / N;
    const Grid grid = make_grid(N, M);
    auto stream = at::cuda::getCurrentCUDAStream();
    FASTGAN_DISPATCH_FLOATING(g.scalar_type(), "grad_penalty_cuda", [&] {
      using acc = acc_t<scalar_t>;
      at::Tensor partial = at::empty({N * grid.chunks}, norms.options());
      partial_kernel<scalar_t><<<grid.grid, kThreads, 0, stream>>>(
          g.const_data_ptr<scalar_t>(), partial.mutable_data_ptr<acc>(), N, M, grid.chunks);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      finish_kernel<acc><<<1, kThreads, 0, stream>>>(partial.const_data_ptr<acc>(), norms.mutable_data_ptr<acc>(),
                                                     pen.mutable_data_ptr<acc>(), N, grid.chunks, acc(center),
                                                     acc(weight), squared);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }

  static void backward(const at::Tensor& grad, const at::Tensor& g, const at::Tensor& norms,
                       at::Tensor& out, double center, double weight, bool squared) {
    const int64_t N = g.size(0), M = g.numel() / N;
    const Grid grid = make_grid(N, M);
    auto stream = at::cuda::getCurrentCUDAStream();
    FASTGAN_DISPATCH_FLOATING(g.scalar_type(), "grad_penalty_backward_cuda", [&] {
      using acc = acc_t<scalar_t>;
      scale_kernel<scalar_t><<<grid.grid, kThreads, 0, stream>>>(
          grad.const_data_ptr<acc>(), g.const_data_ptr<scalar_t>(), norms.const_data_ptr<acc>(),
          out.mutable_data_ptr<scalar_t>(), N, M, acc(center), acc(weight), squared);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
};

std::tuple<at::Tensor, at::Tensor> grad_penalty_cuda(const at::Tensor& g, double center, double weight,
                                                     bool squared) {
  c10::cuda::CUDAGuard guard(g.device());
  return forward_impl<CudaKernels>(g, center, weight, squared);
}

at::Tensor grad_penalty_backward_cuda(const at::Tensor& grad, const at::Tensor& g, const at::Tensor& norms,
                                      double center, double weight, bool squared) {
  c10::cuda::CUDAGuard guard(g.device());
  return backward_impl<CudaKernels>(grad, g, norms, center, weight, squared);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, CUDA, m) {
  m.impl("grad_penalty", &grad_penalty_cuda);
  m.impl("grad_penalty_backward", &grad_penalty_backward_cuda);
}

}  // namespace penalty
}  // namespace fastgan
