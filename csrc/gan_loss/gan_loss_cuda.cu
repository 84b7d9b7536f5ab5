// GAN losses on CUDA: one launch of one block at the batch sizes GANs use, a grid above that.
//
// The batches are tiny (64 to 65536 logits per side), so the cost in eager PyTorch is launches, not
// bytes. One block of kThreads threads walks both sides with a fixed thread-to-element assignment
// and reduces with a fixed tree (common/block_reduce.cuh): deterministic, no atomics, no host sync,
// no workspace. rpgan walks its pairs once (both sides in the same loop). For rals the phases run
// inside the same launch, separated by __syncthreads():
//   1. the means of both sides (block sums),
//   2. terms, d loss / d x, and the sums of l, sigmoid(x) and dl/dz,
//   3. one constant per side added to the gradient (it needs the sums of phase 2).
// A single block moves ~100-200 GB/s, so 65536 fp32 logits (256 KB read, 256 KB written) take a
// few microseconds, in the range of a launch. Above kSingleBlockMax logits (both sides together) one
// block would be the bottleneck, and the grid version runs instead: each block owns a fixed chunk of
// each side and writes its partial sums, one block adds them in block order (still deterministic, no
// atomics, no host sync), in 2 launches (4 for rals: its means first, its gradient constants last).
// The backward is one elementwise launch over both sides: out = grad * saved, grad read on device.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

#include "common/block_reduce.cuh"
#include "gan_loss/gan_loss.h"

namespace fastgan {
namespace gan_loss {
namespace {

constexpr int kThreads = 512;

template <typename scalar_t>
struct SideDev {
  using acc = acc_t<scalar_t>;
  const scalar_t* x;
  acc* g;
  int64_t n;
  acc a, s, b, tau, scale;
};

template <typename scalar_t>
SideDev<scalar_t> side_dev(const Problem& p, int i) {
  using acc = acc_t<scalar_t>;
  SideDev<scalar_t> d;
  d.x = p.x[i].const_data_ptr<scalar_t>();
  d.g = p.n[i] ? p.g[i].mutable_data_ptr<acc>() : nullptr;
  d.n = p.n[i];
  d.a = acc(p.coef[i].a);
  d.s = acc(p.coef[i].s);
  d.b = acc(p.coef[i].b);
  d.tau = acc(p.coef[i].tau);
  d.scale = acc(p.scale[i]);
  return d;
}

// One side's elements i = begin, begin + step, ... < end: writes d loss / d x and adds the terms to
// l, dz and (kStats) sig, the accumulators of that side.
template <typename scalar_t, Form F, bool kStats>
__device__ __forceinline__ void side_terms(const SideDev<scalar_t>& s, int64_t begin, int64_t end, int64_t step,
                                           acc_t<scalar_t> t, acc_t<scalar_t>& l_sum, acc_t<scalar_t>& dz_sum,
                                           acc_t<scalar_t>& sig_sum) {
  using acc = acc_t<scalar_t>;
  for (int64_t i = begin; i < end; i += step) {
    const acc x = acc(s.x[i]);
    acc l, d, dz;
    term<F>(x, s.a, s.s, s.b, t, l, d, dz);
    s.g[i] = s.scale * d;
    l_sum += l;
    dz_sum += dz;
    if (kStats) sig_sum += sigmoid_of(x);
  }
}

// rpgan's pairs i = begin, begin + step, ... < end (both sides have n elements): x = x0_i - x1_i
// with side 0's coefficients, g1_i = -g0_i; adds to v = [l, -, sigmoid0, sigmoid1, -, -].
template <typename scalar_t, bool kStats>
__device__ __forceinline__ void paired_terms(const SideDev<scalar_t>& s0, const SideDev<scalar_t>& s1, int64_t begin,
                                             int64_t end, int64_t step, acc_t<scalar_t> (&v)[6]) {
  using acc = acc_t<scalar_t>;
  for (int64_t i = begin; i < end; i += step) {
    const acc a = acc(s0.x[i]), b = acc(s1.x[i]);
    acc l, d, dz;
    term<Form::Softplus>(a - b, s0.a, s0.s, s0.b, acc(0), l, d, dz);
    const acc g = s0.scale * d;
    s0.g[i] = g;
    s1.g[i] = -g;
    v[0] += l;
    if (kStats) {
      v[2] += sigmoid_of(a);
      v[3] += sigmoid_of(b);
    }
  }
}

template <typename scalar_t, Form F, bool kCoupled, bool kStats, bool kPaired = false>
__global__ void __launch_bounds__(kThreads)
loss_kernel(SideDev<scalar_t> s0, SideDev<scalar_t> s1, acc_t<scalar_t>* loss, acc_t<scalar_t>* stats) {
  using acc = acc_t<scalar_t>;
  __shared__ acc smem[6 * kWarp];
  const int64_t tid = threadIdx.x, nt = blockDim.x;
  acc t0 = 0, t1 = 0;
  if constexpr (kCoupled) {
    acc m[2] = {0, 0};
    for (int64_t i = tid; i < s0.n; i += nt) m[0] += acc(s0.x[i]);
    for (int64_t i = tid; i < s1.n; i += nt) m[1] += acc(s1.x[i]);
    block_sum<acc, 2>(m, smem);
    t0 = s0.tau * (m[1] / acc(s1.n));
    t1 = s1.tau * (m[0] / acc(s0.n));
  }
  // v: [l0, l1, sigmoid0, sigmoid1, dz0, dz1]
  acc v[6] = {0, 0, 0, 0, 0, 0};
  if constexpr (kPaired) {
    paired_terms<scalar_t, kStats>(s0, s1, tid, s0.n, nt, v);
  } else {
    side_terms<scalar_t, F, kStats>(s0, tid, s0.n, nt, t0, v[0], v[4], v[2]);
    side_terms<scalar_t, F, kStats>(s1, tid, s1.n, nt, t1, v[1], v[5], v[3]);
  }
  block_sum<acc, 6>(v, smem);
  if constexpr (kCoupled) {
    // x_k of side i also moves every z of side j through mean(x_i) (see gan_loss.h).
    const acc c0 = s1.tau / acc(s0.n) * s1.scale * v[5];
    const acc c1 = s0.tau / acc(s1.n) * s0.scale * v[4];
    for (int64_t i = tid; i < s0.n; i += nt) s0.g[i] += c0;  // same thread wrote it: no race
    for (int64_t i = tid; i < s1.n; i += nt) s1.g[i] += c1;
  }
  if (tid == 0) {
    *loss = s0.scale * v[0] + s1.scale * v[1];
    if (kStats) {
      stats[0] = v[2] / acc(s0.n);
      stats[1] = v[3] / acc(s1.n);
    }
  }
}

// ---- the grid version (large batches) --------------------------------------------------------------
constexpr int64_t kSingleBlockMax = int64_t(1) << 17;
constexpr int kGridThreads = 256;

// Block k's chunk [b, e) of a side of n elements: contiguous, fixed for a given grid size.
__device__ __forceinline__ void chunk_of(int64_t n, int64_t nb, int64_t& b, int64_t& e) {
  const int64_t per = (n + nb - 1) / nb, k = blockIdx.x;
  b = k * per < n ? k * per : n;
  e = b + per < n ? b + per : n;
}

// part[k][2]: the sums of each side's chunk (the rals means).
template <typename scalar_t>
__global__ void __launch_bounds__(kGridThreads)
mean_partial_kernel(SideDev<scalar_t> s0, SideDev<scalar_t> s1, acc_t<scalar_t>* part) {
  using acc = acc_t<scalar_t>;
  __shared__ acc smem[2 * kWarp];
  const int64_t nb = gridDim.x;
  int64_t b, e;
  acc m[2] = {0, 0};
  chunk_of(s0.n, nb, b, e);
  for (int64_t i = b + threadIdx.x; i < e; i += blockDim.x) m[0] += acc(s0.x[i]);
  chunk_of(s1.n, nb, b, e);
  for (int64_t i = b + threadIdx.x; i < e; i += blockDim.x) m[1] += acc(s1.x[i]);
  block_sum<acc, 2>(m, smem);
  if (threadIdx.x == 0) {
    part[blockIdx.x * 2] = m[0];
    part[blockIdx.x * 2 + 1] = m[1];
  }
}

// part[k][6]: the sums of loss_kernel's v over block k's chunks; g written.
template <typename scalar_t, Form F, bool kCoupled, bool kStats, bool kPaired = false>
__global__ void __launch_bounds__(kGridThreads)
terms_kernel(SideDev<scalar_t> s0, SideDev<scalar_t> s1, const acc_t<scalar_t>* mean_part, acc_t<scalar_t>* part) {
  using acc = acc_t<scalar_t>;
  __shared__ acc smem[6 * kWarp];
  const int64_t nb = gridDim.x;
  acc t0 = 0, t1 = 0;
  if constexpr (kCoupled) {  // every block adds the same partials in the same order: the same means
    acc m[2] = {0, 0};
    for (int64_t k = threadIdx.x; k < nb; k += blockDim.x) {
      m[0] += mean_part[2 * k];
      m[1] += mean_part[2 * k + 1];
    }
    block_sum<acc, 2>(m, smem);
    t0 = s0.tau * (m[1] / acc(s1.n));
    t1 = s1.tau * (m[0] / acc(s0.n));
  }
  acc v[6] = {0, 0, 0, 0, 0, 0};
  int64_t b, e;
  chunk_of(s0.n, nb, b, e);
  if constexpr (kPaired) {
    paired_terms<scalar_t, kStats>(s0, s1, b + threadIdx.x, e, blockDim.x, v);
  } else {
    side_terms<scalar_t, F, kStats>(s0, b + threadIdx.x, e, blockDim.x, t0, v[0], v[4], v[2]);
    chunk_of(s1.n, nb, b, e);
    side_terms<scalar_t, F, kStats>(s1, b + threadIdx.x, e, blockDim.x, t1, v[1], v[5], v[3]);
  }
  block_sum<acc, 6>(v, smem);
  if (threadIdx.x == 0) {
#pragma unroll
    for (int j = 0; j < 6; j++) part[blockIdx.x * 6 + j] = v[j];
  }
}

// One block: the partials in block order -> loss, stats and (rals) the two gradient constants.
template <typename scalar_t, bool kCoupled, bool kStats>
__global__ void __launch_bounds__(kGridThreads)
finish_kernel(SideDev<scalar_t> s0, SideDev<scalar_t> s1, const acc_t<scalar_t>* part, int64_t nb,
              acc_t<scalar_t>* loss, acc_t<scalar_t>* stats, acc_t<scalar_t>* consts) {
  using acc = acc_t<scalar_t>;
  __shared__ acc smem[6 * kWarp];
  acc v[6] = {0, 0, 0, 0, 0, 0};
  for (int64_t k = threadIdx.x; k < nb; k += blockDim.x) {
#pragma unroll
    for (int j = 0; j < 6; j++) v[j] += part[6 * k + j];
  }
  block_sum<acc, 6>(v, smem);
  if (threadIdx.x == 0) {
    *loss = s0.scale * v[0] + s1.scale * v[1];
    if (kStats) {
      stats[0] = v[2] / acc(s0.n);
      stats[1] = v[3] / acc(s1.n);
    }
    if (kCoupled) {
      consts[0] = s1.tau / acc(s0.n) * s1.scale * v[5];
      consts[1] = s0.tau / acc(s1.n) * s0.scale * v[4];
    }
  }
}

template <typename acc>
__global__ void add_consts_kernel(acc* __restrict__ g0, acc* __restrict__ g1, int64_t n0, int64_t n1,
                                  const acc* __restrict__ consts) {
  const acc c0 = consts[0], c1 = consts[1];
  const int64_t n = n0 + n1, stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    if (i < n0) {
      g0[i] += c0;
    } else {
      g1[i - n0] += c1;
    }
  }
}

template <typename acc, typename scalar_t>
__global__ void backward_kernel(const acc* __restrict__ grad, const acc* __restrict__ g0,
                                const acc* __restrict__ g1, scalar_t* __restrict__ o0,
                                scalar_t* __restrict__ o1, int64_t n0, int64_t n1) {
  const acc gv = *grad;
  const int64_t n = n0 + n1, stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    if (i < n0) {
      o0[i] = scalar_t(gv * g0[i]);
    } else {
      o1[i - n0] = scalar_t(gv * g1[i - n0]);
    }
  }
}

template <typename scalar_t, Form F, bool kCoupled, bool kStats, bool kPaired = false>
void launch(Problem& p) {
  using acc = acc_t<scalar_t>;
  auto stream = at::cuda::getCurrentCUDAStream();
  const auto s0 = side_dev<scalar_t>(p, 0), s1 = side_dev<scalar_t>(p, 1);
  acc* loss = p.loss.mutable_data_ptr<acc>();
  acc* stats = kStats ? p.stats_out.mutable_data_ptr<acc>() : nullptr;
  const int64_t n = p.n[0] + p.n[1];
  if (n <= kSingleBlockMax) {
    loss_kernel<scalar_t, F, kCoupled, kStats, kPaired><<<1, kThreads, 0, stream>>>(s0, s1, loss, stats);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t nb = std::max<int64_t>(1, std::min<int64_t>((n + kGridThreads * 16 - 1) / (kGridThreads * 16), sms * 4));
  at::Tensor ws = at::empty({nb * 8 + 2}, p.loss.options());
  acc* mean_part = ws.mutable_data_ptr<acc>();
  acc* part = mean_part + nb * 2;
  acc* consts = part + nb * 6;
  if (kCoupled) {
    mean_partial_kernel<scalar_t><<<nb, kGridThreads, 0, stream>>>(s0, s1, mean_part);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  terms_kernel<scalar_t, F, kCoupled, kStats, kPaired><<<nb, kGridThreads, 0, stream>>>(s0, s1, mean_part, part);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  finish_kernel<scalar_t, kCoupled, kStats><<<1, kGridThreads, 0, stream>>>(s0, s1, part, nb, loss, stats, consts);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (kCoupled) {
    add_consts_kernel<acc><<<std::min<int64_t>((n + 255) / 256, sms * 8), 256, 0, stream>>>(
        s0.g, s1.g, p.n[0], p.n[1], consts);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

struct CudaKernels {
  static void run(Problem& p) {
    FASTGAN_DISPATCH_FLOATING(p.x[0].scalar_type(), "gan_loss_cuda", [&] {
      if (p.paired) {  // softplus form (gan_loss.h)
        return p.stats ? launch<scalar_t, Form::Softplus, false, true, true>(p)
                       : launch<scalar_t, Form::Softplus, false, false, true>(p);
      }
      FASTGAN_DISPATCH_FORM(p.form, [&] {
        if (p.coupled) {
          if constexpr (kForm == Form::Softplus) {
            return p.stats ? launch<scalar_t, kForm, true, true>(p) : launch<scalar_t, kForm, true, false>(p);
          }
          TORCH_INTERNAL_ASSERT(false, "coupled losses use the softplus form");
        }
        return p.stats ? launch<scalar_t, kForm, false, true>(p) : launch<scalar_t, kForm, false, false>(p);
      });
    });
  }
  static void backward(const at::Tensor& grad, const at::Tensor& g0, const at::Tensor& g1,
                       at::Tensor& out0, at::Tensor& out1) {
    const int64_t n = g0.numel() + g1.numel();
    const int threads = 256;
    const int blocks = int(std::min<int64_t>((n + threads - 1) / threads, 1024));
    auto stream = at::cuda::getCurrentCUDAStream();
    FASTGAN_DISPATCH_FLOATING(g0.scalar_type(), "gan_loss_backward_cuda_acc", [&] {
      using acc = scalar_t;
      FASTGAN_DISPATCH_FLOATING(out0.scalar_type(), "gan_loss_backward_cuda", [&] {
        backward_kernel<acc, scalar_t><<<blocks, threads, 0, stream>>>(
            grad.const_data_ptr<acc>(), g0.const_data_ptr<acc>(), g1.const_data_ptr<acc>(),
            out0.mutable_data_ptr<scalar_t>(), out1.mutable_data_ptr<scalar_t>(), g0.numel(), g1.numel());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gan_d_loss_cuda(
    const at::Tensor& real, const at::Tensor& fake, c10::string_view kind, c10::string_view reduction,
    double real_label, double fake_label, bool stats) {
  c10::cuda::CUDAGuard guard(real.device());
  return d_loss_impl<CudaKernels>(real, fake, std::string(kind), std::string(reduction), real_label,
                                  fake_label, stats);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gan_g_loss_cuda(const at::Tensor& fake,
                                                               const c10::optional<at::Tensor>& real,
                                                               c10::string_view kind,
                                                               c10::string_view reduction) {
  c10::cuda::CUDAGuard guard(fake.device());
  return g_loss_impl<CudaKernels>(fake, real, std::string(kind), std::string(reduction));
}

std::tuple<at::Tensor, at::Tensor> gan_loss_backward_cuda(const at::Tensor& grad, const at::Tensor& g0,
                                                          const at::Tensor& g1, at::ScalarType dtype) {
  c10::cuda::CUDAGuard guard(g0.device());
  return loss_backward_impl<CudaKernels>(grad, g0, g1, dtype);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, CUDA, m) {
  m.impl("gan_d_loss", &gan_d_loss_cuda);
  m.impl("gan_g_loss", &gan_g_loss_cuda);
  m.impl("gan_loss_backward", &gan_loss_backward_cuda);
}

}  // namespace gan_loss
}  // namespace fastgan
