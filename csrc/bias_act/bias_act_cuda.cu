// bias_act on CUDA: 16-byte vector loads and stores, fp32 math for fp16/bf16, 64-bit offsets,
// the current stream, and the bias-gradient reduction fused into the backward.
//
// Memory is [A][C][S] (common/layout.h). Each thread handles vectors of VEC = 16 / sizeof(T)
// elements. A vector never straddles two channels when S % VEC == 0 (one channel per vector,
// e.g. NCHW) or when S == 1 and C % VEC == 0 (VEC consecutive channels, channels_last); other
// layouts find the channel of every element. Buffers that are not 16-byte aligned (rare views)
// are copied to fresh, aligned ones first, so one vector width serves every call.
//
// Backward kernels (the first two only when deterministic algorithms are not required):
//   rows   (S % VEC == 0): a warp owns one channel and a range of the outer index; it writes
//          dx and sums it in registers, then one atomicAdd per warp into the fp32 bias gradient.
//   columns (S == 1, C % VEC == 0): a thread owns VEC consecutive channels and a strided set of
//          rows (coalesced across the warp), then VEC atomicAdds.
//   other layouts: the elementwise kernel, then a sum over the non-channel dims.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "bias_act/bias_act.h"

namespace fastgan {
namespace bias_act {
namespace {

constexpr int kThreads = 256;

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

template <typename T, int N>
__device__ __forceinline__ void load_pack(const T* p, acc_t<T> (&out)[N]) {
  Pack<T, N> pk = *reinterpret_cast<const Pack<T, N>*>(p);
#pragma unroll
  for (int i = 0; i < N; i++) out[i] = acc_t<T>(pk.v[i]);
}

template <typename T, int N>
__device__ __forceinline__ void store_pack(T* p, const acc_t<T> (&in)[N]) {
  Pack<T, N> pk;
#pragma unroll
  for (int i = 0; i < N; i++) pk.v[i] = T(in[i]);
  *reinterpret_cast<Pack<T, N>*>(p) = pk;
}

// Channel of flat offset m: (m / S) % C, in 32 bits when the tensor allows it.
struct ChannelOf {
  int64_t S, C;
  bool small;  // numel < 2^32
  __device__ __forceinline__ int64_t operator()(int64_t m) const {
    if (small) return int64_t((uint32_t(m) / uint32_t(S)) % uint32_t(C));
    return (m / S) % C;
  }
};

enum Mode : int { kNoBias = 0, kRowVec = 1, kColVec = 2, kPerElem = 3 };

inline int mode_of(const ChannelLayout& l, bool has_bias, int vec) {
  if (!has_bias) return kNoBias;
  if (l.S % vec == 0) return kRowVec;
  if (l.S == 1 && l.C % vec == 0) return kColVec;
  return kPerElem;
}

// Bias of element j of the vector at offset m.
template <typename acc>
__device__ __forceinline__ acc bias_at(const acc* b, int mode, const ChannelOf& ch, int64_t m, int j,
                                       int64_t c0) {
  if (mode == kNoBias) return acc(0);
  if (mode == kRowVec) return b[c0];
  if (mode == kColVec) return b[c0 + j];
  return b[ch(m + j)];
}

// x and y may be the same buffer (the in-place op): neither is __restrict__.
template <Act A, typename T, int VEC>
__global__ void forward_kernel(const T* x, T* y, uint8_t* mask, const acc_t<T>* b,
                               int64_t n, ChannelOf ch, int mode, acc_t<T> alpha, acc_t<T> gain,
                               acc_t<T> clamp) {
  using acc = acc_t<T>;
  const bool has_clamp = clamp >= acc(0);
  const int64_t nvec = n / VEC;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t v = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; v < nvec + VEC; v += stride) {
    // Vectors first; the last VEC "vectors" are the scalar tail elements, one per thread.
    const bool tail = v >= nvec;
    const int64_t m = tail ? nvec * VEC + (v - nvec) : v * VEC;
    if (tail && m >= n) continue;
    const int cnt = tail ? 1 : VEC;
    acc pre[VEC], out[VEC];
    if (tail) {
      pre[0] = acc(x[m]);
    } else {
      load_pack<T, VEC>(x + m, pre);
    }
    const int64_t c0 = (mode == kRowVec || mode == kColVec || (tail && mode != kNoBias)) ? ch(m) : 0;
    Pack<uint8_t, VEC> cls;
#pragma unroll
    for (int j = 0; j < VEC; j++) {
      if (j < cnt) {
        pre[j] += tail ? (mode == kNoBias ? acc(0) : b[c0]) : bias_at(b, mode, ch, m, j, c0);
        acc o = act_f<A>(pre[j], alpha) * gain;
        if (mask) cls.v[j] = mask_class<A>(pre[j], o, has_clamp ? clamp : acc(-1));
        out[j] = has_clamp ? clamp_(o, clamp) : o;
      }
    }
    if (tail) {
      y[m] = T(out[0]);
      if (mask) mask[m] = cls.v[0];
    } else {
      store_pack<T, VEC>(y + m, out);
      if (mask) *reinterpret_cast<Pack<uint8_t, VEC>*>(mask + m) = cls;
    }
  }
}

// dx for the VEC elements at m (cnt of them valid): factor(ref) * g.
template <Act A, Ref R, typename T, int VEC>
__device__ __forceinline__ void backward_elems(const T* g, const void* ref, T* gx, const acc_t<T>* b,
                                               int64_t m, int cnt, int mode, const ChannelOf& ch,
                                               int64_t c0, acc_t<T> alpha, acc_t<T> gain,
                                               acc_t<T> clamp, bool has_clamp, acc_t<T> (&d)[VEC]) {
  using acc = acc_t<T>;
  acc r[VEC];
  if (cnt == VEC) {
    load_pack<T, VEC>(g + m, d);
    if constexpr (R == Ref::Mask) {
      Pack<uint8_t, VEC> mk = *reinterpret_cast<const Pack<uint8_t, VEC>*>(static_cast<const uint8_t*>(ref) + m);
#pragma unroll
      for (int j = 0; j < VEC; j++) r[j] = acc(mk.v[j]);
    } else if constexpr (R == Ref::X || R == Ref::Y) {
      load_pack<T, VEC>(static_cast<const T*>(ref) + m, r);
    }
  } else {
    for (int j = 0; j < cnt; j++) {
      d[j] = acc(g[m + j]);
      if constexpr (R == Ref::Mask) r[j] = acc(static_cast<const uint8_t*>(ref)[m + j]);
      else if constexpr (R == Ref::X || R == Ref::Y) r[j] = acc(static_cast<const T*>(ref)[m + j]);
    }
  }
#pragma unroll
  for (int j = 0; j < VEC; j++) {
    if (j < cnt) {
      acc rj = acc(0);
      if constexpr (R != Ref::None) rj = r[j];
      if constexpr (R == Ref::X) {
        if (b) rj += cnt == VEC ? bias_at(b, mode, ch, m, j, c0) : b[ch(m + j)];
      }
      d[j] *= grad_factor<A, R>(rj, alpha, gain, clamp, has_clamp, gain == acc(0));
    } else {
      d[j] = acc(0);
    }
  }
  if (cnt == VEC) {
    store_pack<T, VEC>(gx + m, d);
  } else {
    for (int j = 0; j < cnt; j++) gx[m + j] = T(d[j]);
  }
}

template <Act A, Ref R, typename T, int VEC>
__global__ void backward_kernel(const T* g, const void* ref, T* gx, const acc_t<T>* b, int64_t n,
                                ChannelOf ch, int mode, acc_t<T> alpha, acc_t<T> gain, acc_t<T> clamp) {
  using acc = acc_t<T>;
  const bool has_clamp = clamp >= acc(0);
  const int64_t nvec = n / VEC;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t v = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; v < nvec + VEC; v += stride) {
    const bool tail = v >= nvec;
    const int64_t m = tail ? nvec * VEC + (v - nvec) : v * VEC;
    if (tail && m >= n) continue;
    const int64_t c0 = (!tail && (mode == kRowVec || mode == kColVec)) ? ch(m) : 0;
    acc d[VEC];
    backward_elems<A, R, T, VEC>(g, ref, gx, b, m, tail ? 1 : VEC, mode, ch, c0, alpha, gain, clamp,
                                 has_clamp, d);
  }
}

// Rows: warp w owns channel c = w % C and outer indices [a0, a1) of chunk w / C.
template <Act A, Ref R, typename T, int VEC>
__global__ void backward_rows_kernel(const T* g, const void* ref, T* gx, const acc_t<T>* b,
                                     acc_t<T>* gb, int64_t Aext, int64_t C, int64_t S, int64_t chunk,
                                     int64_t nwarps, acc_t<T> alpha, acc_t<T> gain, acc_t<T> clamp) {
  using acc = acc_t<T>;
  const bool has_clamp = clamp >= acc(0);
  const int lane = threadIdx.x % 32;
  const int64_t svec = S / VEC;
  const ChannelOf ch{S, C, false};
  for (int64_t w = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32; w < nwarps;
       w += int64_t(gridDim.x) * blockDim.x / 32) {
    const int64_t c = w % C;
    const int64_t a0 = (w / C) * chunk;
    const int64_t a1 = a0 + chunk < Aext ? a0 + chunk : Aext;
    const int64_t items = (a1 - a0) * svec;
    acc sum = acc(0);
    for (int64_t k = lane; k < items; k += 32) {
      const int64_t a = a0 + k / svec;
      const int64_t m = (a * C + c) * S + (k % svec) * VEC;
      acc d[VEC];
      backward_elems<A, R, T, VEC>(g, ref, gx, b, m, VEC, kRowVec, ch, c, alpha, gain, clamp, has_clamp, d);
#pragma unroll
      for (int j = 0; j < VEC; j++) sum += d[j];
    }
#pragma unroll
    for (int off = 16; off > 0; off /= 2) sum += __shfl_down_sync(0xffffffffu, sum, off);
    if (lane == 0) atomicAdd(gb + c, sum);
  }
}

// Columns (S == 1): thread t owns channels [VEC*(t % Cv), +VEC) and rows t / Cv, + nchunks, ...
template <Act A, Ref R, typename T, int VEC>
__global__ void backward_cols_kernel(const T* g, const void* ref, T* gx, const acc_t<T>* b,
                                     acc_t<T>* gb, int64_t Aext, int64_t C, int64_t nchunks,
                                     acc_t<T> alpha, acc_t<T> gain, acc_t<T> clamp) {
  using acc = acc_t<T>;
  const bool has_clamp = clamp >= acc(0);
  const int64_t Cv = C / VEC;
  const ChannelOf ch{1, C, false};
  const int64_t total = Cv * nchunks;
  for (int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; t < total;
       t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c0 = (t % Cv) * VEC;
    acc sum[VEC];
#pragma unroll
    for (int j = 0; j < VEC; j++) sum[j] = acc(0);
    for (int64_t a = t / Cv; a < Aext; a += nchunks) {
      acc d[VEC];
      backward_elems<A, R, T, VEC>(g, ref, gx, b, a * C + c0, VEC, kColVec, ch, c0, alpha, gain, clamp,
                                   has_clamp, d);
#pragma unroll
      for (int j = 0; j < VEC; j++) sum[j] += d[j];
    }
#pragma unroll
    for (int j = 0; j < VEC; j++) atomicAdd(gb + c0 + j, sum[j]);
  }
}

int64_t blocks_for(int64_t work_items) {
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t want = (work_items + kThreads - 1) / kThreads;
  return std::max<int64_t>(1, std::min<int64_t>(want, sms * 8));
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// A 16-byte-aligned tensor with t's values and strides (t itself when already aligned).
at::Tensor aligned(const at::Tensor& t) {
  if (!t.defined() || t.numel() == 0 || aligned16(t.const_data_ptr())) return t;
  at::Tensor out = at::empty_like(t);
  out.copy_(t);
  return out;
}

struct CudaKernels {
  static void forward(const at::Tensor& x_in, const at::Tensor& b, at::Tensor& y, at::Tensor& mask,
                      const ChannelLayout& l, const Params& p) {
    const c10::cuda::CUDAGuard guard(x_in.device());
    const at::Tensor x = aligned(x_in);
    const bool direct = aligned16(y.data_ptr()) && (!mask.numel() || aligned16(mask.data_ptr()));
    at::Tensor yy = direct ? y : at::empty_like(y), mm = direct || !mask.numel() ? mask : at::empty_like(mask);
    const int64_t n = x.numel();
    auto stream = at::cuda::getCurrentCUDAStream();
    FASTGAN_DISPATCH_FLOATING(x.scalar_type(), "bias_act_cuda", [&] {
      using acc = acc_t<scalar_t>;
      constexpr int VEC = 16 / sizeof(scalar_t);
      const ChannelOf ch{l.S, l.C, n < (int64_t(1) << 32)};
      const int mode = mode_of(l, b.defined(), VEC);
      FASTGAN_DISPATCH_ACT(p.act, [&] {
        forward_kernel<kAct, scalar_t, VEC><<<blocks_for(n / VEC + VEC), kThreads, 0, stream>>>(
            x.const_data_ptr<scalar_t>(), yy.mutable_data_ptr<scalar_t>(),
            mm.numel() ? mm.mutable_data_ptr<uint8_t>() : nullptr,
            b.defined() ? b.const_data_ptr<acc>() : nullptr, n, ch, mode, acc(p.alpha), acc(p.gain),
            acc(p.clamp));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
    if (!direct) {
      y.copy_(yy);
      if (mask.numel()) mask.copy_(mm);
    }
  }

  static void backward(const at::Tensor& g_in, const at::Tensor& ref_in, const at::Tensor& b, at::Tensor& gx,
                       at::Tensor& gb, const ChannelLayout& l, const Params& p) {
    const c10::cuda::CUDAGuard guard(g_in.device());
    const at::Tensor g = aligned(g_in), ref = aligned(ref_in);
    const bool direct = aligned16(gx.data_ptr());
    at::Tensor out = direct ? gx : at::empty_like(gx);
    const int64_t n = g.numel();
    auto stream = at::cuda::getCurrentCUDAStream();
    const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
    // The fused reductions add per-warp/per-thread partials with atomicAdd, in an order that varies
    // from run to run; under torch.use_deterministic_algorithms(True) the bias gradient is instead
    // the sum of dx (ATen's deterministic reduction), one pass more.
    const bool deterministic = at::globalContext().deterministicAlgorithms();
    bool reduced = false;
    FASTGAN_DISPATCH_FLOATING(g.scalar_type(), "bias_act_backward_cuda", [&] {
      using acc = acc_t<scalar_t>;
      constexpr int VEC = 16 / sizeof(scalar_t);
      const ChannelOf ch{l.S, l.C, n < (int64_t(1) << 32)};
      const int mode = mode_of(l, true, VEC);
      const void* rp = ref.defined() && ref.numel() ? ref.const_data_ptr() : nullptr;
      const acc* bp = b.defined() ? b.const_data_ptr<acc>() : nullptr;
      const scalar_t* gp = g.const_data_ptr<scalar_t>();
      scalar_t* op = out.mutable_data_ptr<scalar_t>();
      const acc alpha = acc(p.alpha), gain = acc(p.gain), clamp = acc(p.clamp);
      FASTGAN_DISPATCH_ACT(p.act, [&] {
        auto launch = [&](auto ref_tag) {
          constexpr Ref R = decltype(ref_tag)::value;
          if (gb.defined() && mode == kRowVec && !deterministic) {
            const int64_t target_warps = sms * 64;
            const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(l.A, (target_warps + l.C - 1) / l.C));
            const int64_t chunk = (l.A + chunks - 1) / chunks;
            const int64_t nwarps = l.C * ((l.A + chunk - 1) / chunk);
            const int64_t blocks = std::min<int64_t>((nwarps * 32 + kThreads - 1) / kThreads, sms * 16);
            backward_rows_kernel<kAct, R, scalar_t, VEC><<<blocks, kThreads, 0, stream>>>(
                gp, rp, op, bp, gb.mutable_data_ptr<acc>(), l.A, l.C, l.S, chunk, nwarps, alpha, gain, clamp);
            reduced = true;
          } else if (gb.defined() && mode == kColVec && !deterministic) {
            const int64_t Cv = l.C / VEC;
            const int64_t nchunks = std::max<int64_t>(1, std::min<int64_t>(l.A, (sms * 2048 + Cv - 1) / Cv));
            backward_cols_kernel<kAct, R, scalar_t, VEC><<<blocks_for(Cv * nchunks), kThreads, 0, stream>>>(
                gp, rp, op, bp, gb.mutable_data_ptr<acc>(), l.A, l.C, nchunks, alpha, gain, clamp);
            reduced = true;
          } else {
            backward_kernel<kAct, R, scalar_t, VEC><<<blocks_for(n / VEC + VEC), kThreads, 0, stream>>>(
                gp, rp, op, bp, n, ch, b.defined() ? mode : kNoBias, alpha, gain, clamp);
          }
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        };
        switch (p.ref) {
          case Ref::None: return launch(std::integral_constant<Ref, Ref::None>{});
          case Ref::Mask: return launch(std::integral_constant<Ref, Ref::Mask>{});
          case Ref::Y: return launch(std::integral_constant<Ref, Ref::Y>{});
          default: return launch(std::integral_constant<Ref, Ref::X>{});
        }
      });
    });
    if (!direct) gx.copy_(out);
    if (gb.defined() && !reduced) {
      // Sum of dx over everything but the channel: view flat memory as [A][C][S].
      gb.copy_(gx.as_strided({l.A, l.C, l.S}, {l.C * l.S, l.S, 1}).sum({0, 2}, false, gb.scalar_type()));
    }
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, CUDA, m) {
  m.impl("bias_act", &forward_op<CudaKernels>);
  m.impl("bias_act_backward", &backward_op<CudaKernels>);
  m.impl("bias_act_", &inplace_op<CudaKernels>);
}

}  // namespace bias_act
}  // namespace fastgan
