// DiffAugment on CUDA: one block per sample (grid-strided past 65,535 samples), one launch each way.
// The block first sums x (forward) or G^T gy (backward) over the sample with the deterministic block
// reduction, then writes the sample, a pixel per thread per iteration, all channels of that pixel.
// (csrc/diff_augment/diff_augment.h has the math.)
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

#include "common/block_reduce.cuh"
#include "diff_augment/diff_augment.h"

namespace fastgan {
namespace diff_augment {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxGrid = 65535;

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
apply_kernel(const scalar_t* __restrict__ src, Strides ss, const float* __restrict__ params,
             scalar_t* __restrict__ out, Strides os, Geometry g, bool transpose, bool bias) {
  using acc = acc_t<scalar_t>;
  __shared__ acc smem[kWarp];
  const int64_t P = g.H * g.W;
  for (int64_t n = blockIdx.x; n < g.N; n += gridDim.x) {
    const Sample<acc> s = sample_of<acc>(params + n * kParams);
    const scalar_t* sn = src + n * ss.n;
    scalar_t* on = out + n * os.n;
    acc t[1] = {0};
    for (int64_t q = threadIdx.x; q < P; q += blockDim.x) {
      const int64_t i = q / g.W, j = q % g.W;
      int64_t si = i, sj = j;
      if (transpose && !source(s, g, true, i, j, si, sj)) continue;
      for (int64_t c = 0; c < g.C; c++) t[0] += acc(sn[c * ss.c + si * ss.h + sj * ss.w]);
    }
    block_sum<acc, 1>(t, smem);
    const acc mean = t[0] / acc(g.C * P);
    const acc base = s.kmean * mean + (bias && !transpose ? s.b : acc(0));
    const acc empty = transpose ? s.kmean * mean : acc(0);
    const acc inv_c = acc(1) / acc(g.C);
    for (int64_t q = threadIdx.x; q < P; q += blockDim.x) {
      const int64_t i = q / g.W, j = q % g.W;
      scalar_t* o = on + i * os.h + j * os.w;
      int64_t si, sj;
      if (!source(s, g, transpose, i, j, si, sj)) {
        for (int64_t c = 0; c < g.C; c++) o[c * os.c] = scalar_t(empty);
        continue;
      }
      const scalar_t* p = sn + si * ss.h + sj * ss.w;
      acc pix = 0;
      for (int64_t c = 0; c < g.C; c++) pix += acc(p[c * ss.c]);
      const acc add = s.kpix * (pix * inv_c) + base;
      for (int64_t c = 0; c < g.C; c++) o[c * os.c] = scalar_t(s.ks * acc(p[c * ss.c]) + add);
    }
  }
}

struct CudaKernels {
  static void apply(const at::Tensor& src, const at::Tensor& params, at::Tensor& out, const Geometry& g,
                    bool transpose, bool bias) {
    auto stream = at::cuda::getCurrentCUDAStream();
    const unsigned blocks = unsigned(std::min<int64_t>(g.N, kMaxGrid));
    FASTGAN_DISPATCH_FLOATING(src.scalar_type(), "diff_augment_cuda", [&] {
      apply_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
          src.const_data_ptr<scalar_t>(), strides_of(src), params.const_data_ptr<float>(),
          out.mutable_data_ptr<scalar_t>(), strides_of(out), g, transpose, bias);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
};

at::Tensor diff_augment_cuda(const at::Tensor& x, const at::Tensor& params, at::IntArrayRef cutout, bool bias) {
  c10::cuda::CUDAGuard guard(x.device());
  return apply_impl<CudaKernels>(x, params, cutout, false, bias, "x");
}

at::Tensor diff_augment_backward_cuda(const at::Tensor& grad, const at::Tensor& params, at::IntArrayRef cutout) {
  c10::cuda::CUDAGuard guard(grad.device());
  return apply_impl<CudaKernels>(grad, params, cutout, true, false, "grad");
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, CUDA, m) {
  m.impl("diff_augment", &diff_augment_cuda);
  m.impl("diff_augment_backward", &diff_augment_backward_cuda);
}

}  // namespace diff_augment
}  // namespace fastgan
