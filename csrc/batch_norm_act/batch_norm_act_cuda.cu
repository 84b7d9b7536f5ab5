// batch_norm_act on CUDA.
//
// Memory is [A][C][S] (common/layout.h): S > 1 for NCHW-like layouts, S == 1 for channels_last,
// which is read in place (no copy).
// Per-channel reductions run in two kernels, so that they scale from 4x4 maps at batch 128 (many
// channels, few values each) to 64x64 maps (few channels, many values): a partial kernel whose
// grid splits every channel over several blocks, writing per-block partials, and a finalize kernel
// with one thread per channel that merges them in double and computes the per-channel
// coefficients. No host synchronisation, no atomics (deterministic).
//   S > 1:  grid (C, splits), 256 threads walk the channel's A*S values of their split.
//   S == 1: grid (C/32, splits), blocks of 32 x 8 threads: 32 consecutive channels (coalesced
//           rows), 8 rows at a time.
// Statistics: Welford per thread on x - x[first value of the channel] (fp32 for fp16/bf16/fp32,
// fp64 for fp64), Chan merges across threads, blocks and splits.
// Elementwise kernels: grid-stride, 16-byte vector loads when the layout allows it (then all the
// values of a vector share a channel, or are consecutive channels), else one value per step.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "batch_norm_act/batch_norm_act.h"
#include "common/block_reduce.cuh"

namespace fastgan {
namespace batch_norm_act {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kRowsPerBlock = 8;  // S == 1 kernels: blockDim = (32, kRowsPerBlock)

template <class T>
__device__ __forceinline__ void welford_merge(T& n, T& mean, T& m2, T nb, T meanb, T m2b) {
  if (nb == T(0)) return;
  const T nab = n + nb;
  const T d = meanb - mean;
  const T fb = nb / nab;
  mean += d * fb;
  m2 += m2b + d * d * n * fb;
  n = nab;
}

template <class T>
__device__ __forceinline__ void welford_add(T& n, T& mean, T& m2, T v) {
  n += T(1);
  const T d = v - mean;
  mean += d / n;
  m2 += d * (v - mean);
}

template <class T>
__device__ __forceinline__ void warp_welford(T& n, T& mean, T& m2) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    T nb = __shfl_down_sync(0xffffffffu, n, o);
    T mb = __shfl_down_sync(0xffffffffu, mean, o);
    T qb = __shfl_down_sync(0xffffffffu, m2, o);
    welford_merge(n, mean, m2, nb, mb, qb);
  }
}

template <class T>
__device__ __forceinline__ void warp_sum2(T& a, T& b) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    a += __shfl_down_sync(0xffffffffu, a, o);
    b += __shfl_down_sync(0xffffffffu, b, o);
  }
}

// ---- batch statistics --------------------------------------------------------------------------
// part: [splits][C][3] = (n, mean, m2) of x - shift[c].
// I: the index type of the per-element division j / S, 32-bit when the tensor allows it (a 64-bit
// division costs several times more, once per element).
template <typename scalar_t, typename acc, typename I>
__global__ void stats_partial_s(const scalar_t* __restrict__ x, int64_t A, int64_t C, int64_t S,
                                int64_t per_split, acc* __restrict__ part) {
  const int64_t c = blockIdx.x;
  const I E = I(A * S), Si = I(S);
  const I j0 = I(int64_t(blockIdx.y) * per_split);
  const I j1 = j0 + I(per_split) < E ? j0 + I(per_split) : E;
  const acc shift = acc(x[c * S]);
  acc n = 0, mean = 0, m2 = 0;
  for (I j = j0 + I(threadIdx.x); j < j1; j += I(blockDim.x)) {
    const I a = j / Si;
    welford_add(n, mean, m2, acc(x[(int64_t(a) * C + c) * S + int64_t(j - a * Si)]) - shift);
  }
  __shared__ acc sh[3][kWarps];
  warp_welford(n, mean, m2);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    sh[0][warp] = n;
    sh[1][warp] = mean;
    sh[2][warp] = m2;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < kWarps; w++) welford_merge(n, mean, m2, sh[0][w], sh[1][w], sh[2][w]);
    acc* p = part + (int64_t(blockIdx.y) * C + c) * 3;
    p[0] = n;
    p[1] = mean;
    p[2] = m2;
  }
}

template <typename scalar_t, typename acc>
__global__ void stats_partial_rows(const scalar_t* __restrict__ x, int64_t A, int64_t C, int64_t rows_per_split,
                                   acc* __restrict__ part) {
  const int64_t c = int64_t(blockIdx.x) * 32 + threadIdx.x;
  const int64_t a0 = int64_t(blockIdx.y) * rows_per_split;
  const int64_t a1 = a0 + rows_per_split < A ? a0 + rows_per_split : A;
  acc n = 0, mean = 0, m2 = 0;
  if (c < C) {
    const acc shift = acc(x[c]);
    for (int64_t a = a0 + threadIdx.y; a < a1; a += kRowsPerBlock) welford_add(n, mean, m2, acc(x[a * C + c]) - shift);
  }
  __shared__ acc sh[3][kRowsPerBlock][32];
  sh[0][threadIdx.y][threadIdx.x] = n;
  sh[1][threadIdx.y][threadIdx.x] = mean;
  sh[2][threadIdx.y][threadIdx.x] = m2;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    for (int r = 1; r < kRowsPerBlock; r++)
      welford_merge(n, mean, m2, sh[0][r][threadIdx.x], sh[1][r][threadIdx.x], sh[2][r][threadIdx.x]);
    acc* p = part + (int64_t(blockIdx.y) * C + c) * 3;
    p[0] = n;
    p[1] = mean;
    p[2] = m2;
  }
}

// One thread per channel: merge the splits, add the shift back, and the forward coefficients.
template <typename scalar_t, typename acc>
__global__ void stats_finalize(const acc* __restrict__ part, int64_t splits, int64_t C, const scalar_t* __restrict__ x,
                               int64_t S, const acc* __restrict__ w, const acc* __restrict__ b, double eps,
                               acc* __restrict__ mean_out, acc* __restrict__ var_out, acc* __restrict__ scale,
                               acc* __restrict__ shift_out) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  double n = 0, mean = 0, m2 = 0;
  for (int64_t k = 0; k < splits; k++) {
    const acc* p = part + (k * C + c) * 3;
    chan_merge(n, mean, m2, double(p[0]), double(p[1]), double(p[2]));
  }
  const acc m = acc(mean + double(acc(x[c * S])));
  double v = n > 0 ? m2 / n : 0.0;
  const acc va = acc(v > 0 ? v : 0.0);
  mean_out[c] = m;
  var_out[c] = va;
  // from the rounded statistics, exactly as the backward will recompute them
  FwdCoef f = fwd_coef(double(m), double(va), w ? double(w[c]) : 1.0, b ? double(b[c]) : 0.0, eps);
  scale[c] = acc(f.scale);
  shift_out[c] = acc(f.shift);
}

template <typename acc>
__global__ void fwd_coef_kernel(const acc* __restrict__ mean, const acc* __restrict__ var, const acc* __restrict__ w,
                                const acc* __restrict__ b, double eps, int64_t C, acc* __restrict__ scale,
                                acc* __restrict__ shift) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  FwdCoef f = fwd_coef(double(mean[c]), double(var[c]), w ? double(w[c]) : 1.0, b ? double(b[c]) : 0.0, eps);
  scale[c] = acc(f.scale);
  shift[c] = acc(f.shift);
}

// ---- elementwise helpers -------------------------------------------------------------------
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

// Calls f(i, c) for every element i (channel c), VEC consecutive elements per step; VEC > 1 only
// when those share a channel (S % VEC == 0) or are consecutive channels (S == 1, C % VEC == 0).
// E > 0 (class_batch_norm_act): coefficient tables per (sample, channel), entry (i / E) * C + c,
// E the elements of one sample, T = N * C the length of each table.
struct Geometry {
  int64_t numel, C, S, E = 0, T = 0;
  __device__ __forceinline__ int64_t channel(int64_t i) const { return S == 1 ? i % C : (i / S) % C; }
  __device__ __forceinline__ int64_t entry(int64_t i, int64_t c) const { return E ? (i / E) * C + c : c; }
  __device__ __forceinline__ int64_t table() const { return E ? T : C; }
};

inline int elementwise_blocks(int64_t work) {
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  int64_t blocks = (work + kThreads - 1) / kThreads;
  const int64_t cap = sms * 32;
  return int(blocks < cap ? (blocks > 0 ? blocks : 1) : cap);
}

template <int VEC, typename scalar_t>
inline bool can_vectorize(const Geometry& g, std::initializer_list<const void*> ptrs) {
  if (VEC == 1) return true;
  for (const void* p : ptrs)
    if (reinterpret_cast<uintptr_t>(p) % (sizeof(scalar_t) * VEC) != 0) return false;
  if (g.numel % VEC != 0) return false;
  return g.S == 1 ? g.C % VEC == 0 : g.S % VEC == 0;
}

template <typename scalar_t, Act A, int VEC>
__global__ void apply_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ y, const acc_t<scalar_t>* __restrict__ scale,
                             const acc_t<scalar_t>* __restrict__ shift, Geometry g, acc_t<scalar_t> alpha) {
  using acc = acc_t<scalar_t>;
  const int64_t nv = g.numel / VEC;
  for (int64_t v = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; v < nv; v += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i0 = v * VEC;
    const int64_t c0 = g.entry(i0, g.channel(i0));
    Pack<scalar_t, VEC> in = *reinterpret_cast<const Pack<scalar_t, VEC>*>(x + i0), out;
#pragma unroll
    for (int j = 0; j < VEC; j++) {
      const int64_t c = g.S == 1 ? c0 + j : c0;  // a vector never straddles samples (E % VEC == 0)
      out.v[j] = scalar_t(act_f<A>(pre_act(acc(in.v[j]), scale[c], shift[c]), alpha));
    }
    *reinterpret_cast<Pack<scalar_t, VEC>*>(y + i0) = out;
  }
}

// ---- backward ----------------------------------------------------------------------------------
// Per channel: c1, c2, c3 for slope_and_u (bwd_coef with zero sums).
template <typename acc>
__global__ void bwd_pre_kernel(Ref R, bool training, int64_t C, double M, const acc* __restrict__ mean,
                               const acc* __restrict__ var, const acc* __restrict__ w, const acc* __restrict__ b,
                               double eps, acc* __restrict__ c123) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  BwdCoef k = bwd_coef(R, training, 0.0, 0.0, M, double(mean[c]), double(var[c]), w ? double(w[c]) : 1.0,
                       b ? double(b[c]) : 0.0, 0.0, 0.0, eps);
  c123[c] = acc(k.c1);
  c123[C + c] = acc(k.c2);
  c123[2 * C + c] = acc(k.c3);
}

template <typename scalar_t, Act A, Ref R>
__device__ __forceinline__ void grad_terms(scalar_t gv, scalar_t rv, acc_t<scalar_t> c1, acc_t<scalar_t> c2,
                                           acc_t<scalar_t> c3, acc_t<scalar_t> alpha, acc_t<scalar_t> inv_alpha,
                                           acc_t<scalar_t>& gg, acc_t<scalar_t>& u) {
  using acc = acc_t<scalar_t>;
  acc s;
  slope_and_u<A, R>(acc(rv), c1, c2, c3, alpha, inv_alpha, s, u);
  gg = acc(gv) * s;
}

// part: [splits][C][2] = (sum g, sum g u); I as in stats_partial_s.
template <typename scalar_t, Act A, Ref R, typename I>
__global__ void bwd_partial_s(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ ref, int64_t A_, int64_t C,
                              int64_t S, int64_t per_split, const acc_t<scalar_t>* __restrict__ c123,
                              acc_t<scalar_t> alpha, acc_t<scalar_t> inv_alpha, acc_t<scalar_t>* __restrict__ part) {
  using acc = acc_t<scalar_t>;
  const int64_t c = blockIdx.x;
  const I E = I(A_ * S), Si = I(S);
  const I j0 = I(int64_t(blockIdx.y) * per_split);
  const I j1 = j0 + I(per_split) < E ? j0 + I(per_split) : E;
  const acc c1 = c123[c], c2 = c123[C + c], c3 = c123[2 * C + c];
  acc sg = 0, su = 0;
  for (I j = j0 + I(threadIdx.x); j < j1; j += I(blockDim.x)) {
    const I a = j / Si;
    const int64_t i = (int64_t(a) * C + c) * S + int64_t(j - a * Si);
    acc gg, u;
    grad_terms<scalar_t, A, R>(grad[i], ref[i], c1, c2, c3, alpha, inv_alpha, gg, u);
    sg += gg;
    su += gg * u;
  }
  __shared__ acc sh[2][kWarps];
  warp_sum2(sg, su);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    sh[0][warp] = sg;
    sh[1][warp] = su;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < kWarps; w++) {
      sg += sh[0][w];
      su += sh[1][w];
    }
    acc* p = part + (int64_t(blockIdx.y) * C + c) * 2;
    p[0] = sg;
    p[1] = su;
  }
}

template <typename scalar_t, Act A, Ref R>
__global__ void bwd_partial_rows(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ ref, int64_t A_,
                                 int64_t C, int64_t rows_per_split, const acc_t<scalar_t>* __restrict__ c123,
                                 acc_t<scalar_t> alpha, acc_t<scalar_t> inv_alpha, acc_t<scalar_t>* __restrict__ part) {
  using acc = acc_t<scalar_t>;
  const int64_t c = int64_t(blockIdx.x) * 32 + threadIdx.x;
  const int64_t a0 = int64_t(blockIdx.y) * rows_per_split;
  const int64_t a1 = a0 + rows_per_split < A_ ? a0 + rows_per_split : A_;
  acc sg = 0, su = 0;
  if (c < C) {
    const acc c1 = c123[c], c2 = c123[C + c], c3 = c123[2 * C + c];
    for (int64_t a = a0 + threadIdx.y; a < a1; a += kRowsPerBlock) {
      acc gg, u;
      grad_terms<scalar_t, A, R>(grad[a * C + c], ref[a * C + c], c1, c2, c3, alpha, inv_alpha, gg, u);
      sg += gg;
      su += gg * u;
    }
  }
  __shared__ acc sh[2][kRowsPerBlock][32];
  sh[0][threadIdx.y][threadIdx.x] = sg;
  sh[1][threadIdx.y][threadIdx.x] = su;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    for (int r = 1; r < kRowsPerBlock; r++) {
      sg += sh[0][r][threadIdx.x];
      su += sh[1][r][threadIdx.x];
    }
    acc* p = part + (int64_t(blockIdx.y) * C + c) * 2;
    p[0] = sg;
    p[1] = su;
  }
}

// One thread per channel: the two sums, then dx = A g + B u + C coefficients and dw, db.
template <typename acc>
__global__ void bwd_finalize(const acc* __restrict__ part, int64_t splits, int64_t C, Ref R, bool training, double M,
                             const acc* __restrict__ mean, const acc* __restrict__ var, const acc* __restrict__ w,
                             const acc* __restrict__ b, const acc* __restrict__ gm, const acc* __restrict__ gv,
                             double eps, acc* __restrict__ abc, acc* __restrict__ dw, acc* __restrict__ db) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  double sg = 0, su = 0;
  for (int64_t k = 0; k < splits; k++) {
    sg += double(part[(k * C + c) * 2]);
    su += double(part[(k * C + c) * 2 + 1]);
  }
  BwdCoef k = bwd_coef(R, training, sg, su, M, double(mean[c]), double(var[c]), w ? double(w[c]) : 1.0,
                       b ? double(b[c]) : 0.0, gm ? double(gm[c]) : 0.0, gv ? double(gv[c]) : 0.0, eps);
  abc[c] = acc(k.A);
  abc[C + c] = acc(k.B);
  abc[2 * C + c] = acc(k.C);
  dw[c] = acc(k.dw);
  db[c] = acc(k.db);
}

template <typename scalar_t, Act A, Ref R, int VEC>
__global__ void bwd_apply_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ ref,
                                 scalar_t* __restrict__ gx, const acc_t<scalar_t>* __restrict__ c123,
                                 const acc_t<scalar_t>* __restrict__ abc, Geometry g, acc_t<scalar_t> alpha,
                                 acc_t<scalar_t> inv_alpha) {
  using acc = acc_t<scalar_t>;
  const int64_t C = g.table();
  const int64_t nv = g.numel / VEC;
  for (int64_t v = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; v < nv; v += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i0 = v * VEC;
    const int64_t c0 = g.entry(i0, g.channel(i0));
    Pack<scalar_t, VEC> gin = *reinterpret_cast<const Pack<scalar_t, VEC>*>(grad + i0);
    Pack<scalar_t, VEC> rin = *reinterpret_cast<const Pack<scalar_t, VEC>*>(ref + i0), out;
#pragma unroll
    for (int j = 0; j < VEC; j++) {
      const int64_t c = g.S == 1 ? c0 + j : c0;
      acc gg, u;
      grad_terms<scalar_t, A, R>(gin.v[j], rin.v[j], c123[c], c123[C + c], c123[2 * C + c], alpha, inv_alpha, gg, u);
      out.v[j] = scalar_t(fma_(abc[c], gg, fma_(abc[C + c], u, abc[2 * C + c])));
    }
    *reinterpret_cast<Pack<scalar_t, VEC>*>(gx + i0) = out;
  }
}

// ---- class-conditional ---------------------------------------------------------------------------
// One thread per (n, c): c123 = [scale | shift | mean] tables (3 x N C) of z = x scale + shift.
template <typename acc>
__global__ void class_coef_kernel(int64_t N, int64_t C, int64_t K, const int64_t* __restrict__ y,
                                  const acc* __restrict__ w, const acc* __restrict__ b, const acc* __restrict__ mean,
                                  const acc* __restrict__ var, double eps, acc* __restrict__ c123) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t NC = N * C;
  if (i >= NC) return;
  const int64_t n = i / C, c = i - n * C;
  const int64_t k = y[n];
  if (k < 0 || k >= K) __trap();  // a label outside [0, K): the CPU entry point names it instead
  FwdCoef f = fwd_coef(double(mean[c]), double(var[c]), double(w[k * C + c]), double(b[k * C + c]), eps);
  c123[i] = acc(f.scale);
  c123[NC + i] = acc(f.shift);
  c123[2 * NC + i] = mean[c];
}

// One block per (n, c): part[(n C + c) * 2 + {0, 1}] = (sum g, sum g u) over the sample's H*W values.
template <typename scalar_t, Act A>
__global__ void class_sums_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ x, int64_t C,
                                  int64_t S, int64_t HW, const acc_t<scalar_t>* __restrict__ c123, int64_t NC,
                                  acc_t<scalar_t> alpha, acc_t<scalar_t>* __restrict__ part) {
  using acc = acc_t<scalar_t>;
  const int64_t nc = blockIdx.x;
  const int64_t n = nc / C, c = nc - n * C;
  const acc c1 = c123[nc], c2 = c123[NC + nc], c3 = c123[2 * NC + nc];
  acc v[2] = {acc(0), acc(0)};
  for (int64_t p = threadIdx.x; p < HW; p += blockDim.x) {
    const int64_t i = S == 1 ? (n * HW + p) * C + c : nc * HW + p;
    acc gg, u;
    grad_terms<scalar_t, A, Ref::X>(grad[i], x[i], c1, c2, c3, alpha, acc(0), gg, u);
    v[0] += gg;
    v[1] += gg * u;
  }
  __shared__ acc sh[2 * kWarp];
  block_sum<acc, 2>(v, sh);
  if (threadIdx.x == 0) {
    part[nc * 2] = v[0];
    part[nc * 2 + 1] = v[1];
  }
}

// One thread per channel: abc = [A | B | C] tables (3 x N C) of dx = A g + B u + C, and the
// per-class gradients (float64, column c is this thread's alone: deterministic).
template <typename acc>
__global__ void class_bwd_coef_kernel(int64_t N, int64_t C, const int64_t* __restrict__ y,
                                      const acc* __restrict__ part, bool training, double M,
                                      const acc* __restrict__ var, const acc* __restrict__ w,
                                      const acc* __restrict__ gm, const acc* __restrict__ gv, double eps,
                                      acc* __restrict__ abc, double* __restrict__ dw, double* __restrict__ db) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  const int64_t NC = N * C;
  double B, Cc;
  class_bwd_channel(c, N, C, y, part, training, M, double(var[c]), w, gm ? double(gm[c]) : 0.0,
                    gv ? double(gv[c]) : 0.0, eps, abc + c, B, Cc, dw + c, db + c);
  for (int64_t n = 0; n < N; n++) {
    abc[NC + n * C + c] = acc(B);
    abc[2 * NC + n * C + c] = acc(Cc);
  }
}

// ---- running-stat update ---------------------------------------------------------------------
template <typename scalar_t, typename stat_t>
__global__ void update_kernel(scalar_t* __restrict__ rm, scalar_t* __restrict__ rv, const stat_t* __restrict__ mean,
                              const stat_t* __restrict__ var, const int64_t* __restrict__ nbt, double momentum,
                              int64_t C, double count) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  double f = momentum;
  if (nbt != nullptr) {
    const int64_t t = *nbt;
    f = 1.0 / double(t > 1 ? t : 1);
  }
  double a = double(rm[c]), b = double(rv[c]);
  update_running(a, b, double(mean[c]), double(var[c]), f, count);
  rm[c] = scalar_t(a);
  rv[c] = scalar_t(b);
}

// ---- launch ------------------------------------------------------------------------------------
struct Split {
  int64_t splits, per;  // per: values (S > 1) or rows (S == 1) per split
};

inline Split choose_split(const ChannelLayout& l) {
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t target = 4 * sms;  // blocks wanted in flight
  auto cdiv = [](int64_t a, int64_t b) { return (a + b - 1) / b; };
  int64_t total, col_blocks, min_per;
  if (l.S == 1) {
    total = l.A;
    col_blocks = cdiv(l.C, 32);
    min_per = 4 * kRowsPerBlock;
  } else {
    total = l.A * l.S;
    col_blocks = l.C;
    min_per = 4 * kThreads;
  }
  int64_t splits = std::max<int64_t>(1, std::min(cdiv(target, col_blocks), cdiv(total, min_per)));
  splits = std::max(splits, cdiv(total, int64_t(1) << 22));  // float counts stay exact
  splits = std::min<int64_t>(splits, 65535);
  const int64_t per = cdiv(total, splits);
  return {cdiv(total, per), per};
}

inline int channel_blocks(int64_t C) { return int((C + kThreads - 1) / kThreads); }

// The per-channel index range A * S (plus a block's stride past its end) fits 32 bits.
inline bool small_index(const ChannelLayout& l) { return l.A * l.S + kThreads < (int64_t(1) << 31); }

template <class T>
inline const T* opt_ptr(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<T>() : nullptr;
}

// Batch statistics into mean/var, and the per-channel scale/shift for weight w and bias b.
template <typename scalar_t>
void stats(const at::Tensor& x, const ChannelLayout& l, const at::Tensor& w, const at::Tensor& b, double eps,
           at::Tensor& mean, at::Tensor& var, acc_t<scalar_t>* scale, acc_t<scalar_t>* shift, cudaStream_t stream) {
  using acc = acc_t<scalar_t>;
  const int64_t C = l.C;
  const Split sp = choose_split(l);
  at::Tensor part = at::empty({sp.splits, C, 3}, mean.options());
  if (l.S == 1) {
    stats_partial_rows<scalar_t, acc><<<dim3(unsigned((C + 31) / 32), unsigned(sp.splits)),
                                        dim3(32, kRowsPerBlock), 0, stream>>>(
        x.const_data_ptr<scalar_t>(), l.A, C, sp.per, part.mutable_data_ptr<acc>());
  } else if (small_index(l)) {
    stats_partial_s<scalar_t, acc, uint32_t><<<dim3(unsigned(C), unsigned(sp.splits)), kThreads, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), l.A, C, l.S, sp.per, part.mutable_data_ptr<acc>());
  } else {
    stats_partial_s<scalar_t, acc, int64_t><<<dim3(unsigned(C), unsigned(sp.splits)), kThreads, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), l.A, C, l.S, sp.per, part.mutable_data_ptr<acc>());
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  stats_finalize<scalar_t, acc><<<channel_blocks(C), kThreads, 0, stream>>>(
      part.const_data_ptr<acc>(), sp.splits, C, x.const_data_ptr<scalar_t>(), l.S, opt_ptr<acc>(w), opt_ptr<acc>(b),
      eps, mean.mutable_data_ptr<acc>(), var.mutable_data_ptr<acc>(), scale, shift);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

struct CudaKernels {
  static void forward(const at::Tensor& x, const ChannelLayout& l, bool training, const at::Tensor& w,
                      const at::Tensor& b, at::Tensor& mean, at::Tensor& var, double eps, at::Tensor& y, Act act,
                      double alpha) {
    const c10::cuda::CUDAGuard guard(x.device());
    cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    const int64_t C = l.C;
    FASTGAN_DISPATCH_FLOATING(x.scalar_type(), "batch_norm_act_cuda", [&] {
      using acc = acc_t<scalar_t>;
      at::Tensor coef = at::empty({2, C}, mean.options());
      acc* scale = coef.mutable_data_ptr<acc>();
      acc* shift = scale + C;
      if (training) {
        stats<scalar_t>(x, l, w, b, eps, mean, var, scale, shift, stream);
      } else {
        fwd_coef_kernel<acc><<<channel_blocks(C), kThreads, 0, stream>>>(
            mean.const_data_ptr<acc>(), var.const_data_ptr<acc>(), opt_ptr<acc>(w), opt_ptr<acc>(b), eps, C, scale, shift);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
      const Geometry g{x.numel(), C, l.S};
      constexpr int kVec = 16 / sizeof(scalar_t);
      const scalar_t* xp = x.const_data_ptr<scalar_t>();
      scalar_t* yp = y.mutable_data_ptr<scalar_t>();
      FASTGAN_BNA_DISPATCH_ACT(act, [&] {
        if (can_vectorize<kVec, scalar_t>(g, {xp, yp})) {
          apply_kernel<scalar_t, kAct, kVec><<<elementwise_blocks(g.numel / kVec), kThreads, 0, stream>>>(
              xp, yp, scale, shift, g, acc(alpha));
        } else {
          apply_kernel<scalar_t, kAct, 1><<<elementwise_blocks(g.numel), kThreads, 0, stream>>>(
              xp, yp, scale, shift, g, acc(alpha));
        }
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }

  static void backward(const at::Tensor& grad, const at::Tensor& ref, const ChannelLayout& l, const at::Tensor& mean,
                       const at::Tensor& var, const at::Tensor& w, const at::Tensor& b, const at::Tensor& gm,
                       const at::Tensor& gv, bool training, double eps, Act act, double alpha, Ref r, at::Tensor& gx,
                       at::Tensor& dw, at::Tensor& db) {
    const c10::cuda::CUDAGuard guard(ref.device());
    cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    const int64_t C = l.C;
    const double M = double(ref.numel() / C);
    FASTGAN_DISPATCH_FLOATING(ref.scalar_type(), "batch_norm_act_backward_cuda", [&] {
      using acc = acc_t<scalar_t>;
      at::Tensor ws = at::empty({6, C}, mean.options());
      acc* c123 = ws.mutable_data_ptr<acc>();
      acc* abc = c123 + 3 * C;
      bwd_pre_kernel<acc><<<channel_blocks(C), kThreads, 0, stream>>>(
          r, training, C, M, mean.const_data_ptr<acc>(), var.const_data_ptr<acc>(), opt_ptr<acc>(w), opt_ptr<acc>(b),
          eps, c123);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      const Split sp = choose_split(l);
      at::Tensor part = at::empty({sp.splits, C, 2}, mean.options());
      const acc a_ = acc(alpha), ia = acc(alpha != 0 ? 1.0 / alpha : 0.0);
      const scalar_t* gp = grad.const_data_ptr<scalar_t>();
      const scalar_t* rp = ref.const_data_ptr<scalar_t>();
      scalar_t* gxp = gx.mutable_data_ptr<scalar_t>();
      const Geometry g{ref.numel(), C, l.S};
      constexpr int kVec = 16 / sizeof(scalar_t);
      auto run = [&](auto act_tag, auto ref_tag) {
        constexpr Act kA = decltype(act_tag)::value;
        constexpr Ref kR = decltype(ref_tag)::value;
        if (l.S == 1) {
          bwd_partial_rows<scalar_t, kA, kR><<<dim3(unsigned((C + 31) / 32), unsigned(sp.splits)),
                                               dim3(32, kRowsPerBlock), 0, stream>>>(
              gp, rp, l.A, C, sp.per, c123, a_, ia, part.mutable_data_ptr<acc>());
        } else if (small_index(l)) {
          bwd_partial_s<scalar_t, kA, kR, uint32_t><<<dim3(unsigned(C), unsigned(sp.splits)), kThreads, 0, stream>>>(
              gp, rp, l.A, C, l.S, sp.per, c123, a_, ia, part.mutable_data_ptr<acc>());
        } else {
          bwd_partial_s<scalar_t, kA, kR, int64_t><<<dim3(unsigned(C), unsigned(sp.splits)), kThreads, 0, stream>>>(
              gp, rp, l.A, C, l.S, sp.per, c123, a_, ia, part.mutable_data_ptr<acc>());
        }
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        bwd_finalize<acc><<<channel_blocks(C), kThreads, 0, stream>>>(
            part.const_data_ptr<acc>(), sp.splits, C, r, training, M, mean.const_data_ptr<acc>(),
            var.const_data_ptr<acc>(), opt_ptr<acc>(w), opt_ptr<acc>(b), opt_ptr<acc>(gm), opt_ptr<acc>(gv), eps, abc,
            dw.mutable_data_ptr<acc>(), db.mutable_data_ptr<acc>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        if (can_vectorize<kVec, scalar_t>(g, {gp, rp, gxp})) {
          bwd_apply_kernel<scalar_t, kA, kR, kVec><<<elementwise_blocks(g.numel / kVec), kThreads, 0, stream>>>(
              gp, rp, gxp, c123, abc, g, a_, ia);
        } else {
          bwd_apply_kernel<scalar_t, kA, kR, 1><<<elementwise_blocks(g.numel), kThreads, 0, stream>>>(
              gp, rp, gxp, c123, abc, g, a_, ia);
        }
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      };
      using X = std::integral_constant<Ref, Ref::X>;
      using Y = std::integral_constant<Ref, Ref::Y>;
      FASTGAN_BNA_DISPATCH_ACT(act, [&] {
        using AT = std::integral_constant<Act, kAct>;
        if (r == Ref::X) {
          run(AT{}, X{});
        } else if constexpr (kAct != Act::Relu) {
          run(AT{}, Y{});
        }
      });
    });
  }

  static void class_forward(const at::Tensor& x, const ChannelLayout& l, bool training, const at::Tensor& y,
                            const at::Tensor& w, const at::Tensor& b, at::Tensor& mean, at::Tensor& var, double eps,
                            at::Tensor& out, Act act, double alpha) {
    const c10::cuda::CUDAGuard guard(x.device());
    cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    const int64_t N = x.size(0), C = l.C, NC = N * C;
    FASTGAN_DISPATCH_FLOATING(x.scalar_type(), "class_batch_norm_act_cuda", [&] {
      using acc = acc_t<scalar_t>;
      at::Tensor tabs = at::empty({3 * NC + 2 * C}, mean.options());
      acc* c123 = tabs.mutable_data_ptr<acc>();
      if (training) stats<scalar_t>(x, l, at::Tensor(), at::Tensor(), eps, mean, var, c123 + 3 * NC, c123 + 3 * NC + C,
                                    stream);
      class_coef_kernel<acc><<<unsigned((NC + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
          N, C, w.size(0), y.const_data_ptr<int64_t>(), w.const_data_ptr<acc>(), b.const_data_ptr<acc>(),
          mean.const_data_ptr<acc>(), var.const_data_ptr<acc>(), eps, c123);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      const Geometry g{x.numel(), C, l.S, x.numel() / N, NC};
      constexpr int kVec = 16 / sizeof(scalar_t);
      const scalar_t* xp = x.const_data_ptr<scalar_t>();
      scalar_t* op = out.mutable_data_ptr<scalar_t>();
      FASTGAN_BNA_DISPATCH_ACT(act, [&] {
        if (can_vectorize<kVec, scalar_t>(g, {xp, op})) {
          apply_kernel<scalar_t, kAct, kVec><<<elementwise_blocks(g.numel / kVec), kThreads, 0, stream>>>(
              xp, op, c123, c123 + NC, g, acc(alpha));
        } else {
          apply_kernel<scalar_t, kAct, 1><<<elementwise_blocks(g.numel), kThreads, 0, stream>>>(
              xp, op, c123, c123 + NC, g, acc(alpha));
        }
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }

  static void class_backward(const at::Tensor& grad, const at::Tensor& x, const ChannelLayout& l, const at::Tensor& y,
                             const at::Tensor& mean, const at::Tensor& var, const at::Tensor& w, const at::Tensor& b,
                             const at::Tensor& gm, const at::Tensor& gv, bool training, double eps, Act act,
                             double alpha, at::Tensor& gx, at::Tensor& dw, at::Tensor& db) {
    const c10::cuda::CUDAGuard guard(x.device());
    cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    const int64_t N = x.size(0), C = l.C, NC = N * C;
    const double M = double(x.numel() / C);
    FASTGAN_DISPATCH_FLOATING(x.scalar_type(), "class_batch_norm_act_backward_cuda", [&] {
      using acc = acc_t<scalar_t>;
      at::Tensor tabs = at::empty({8 * NC}, mean.options());
      acc* c123 = tabs.mutable_data_ptr<acc>();
      acc* abc = c123 + 3 * NC;
      acc* part = abc + 3 * NC;
      const int64_t* yp = y.const_data_ptr<int64_t>();
      class_coef_kernel<acc><<<unsigned((NC + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
          N, C, w.size(0), yp, w.const_data_ptr<acc>(), b.const_data_ptr<acc>(), mean.const_data_ptr<acc>(),
          var.const_data_ptr<acc>(), eps, c123);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      const scalar_t* gp = grad.const_data_ptr<scalar_t>();
      const scalar_t* xp = x.const_data_ptr<scalar_t>();
      scalar_t* gxp = gx.mutable_data_ptr<scalar_t>();
      const Geometry g{x.numel(), C, l.S, x.numel() / N, NC};
      constexpr int kVec = 16 / sizeof(scalar_t);
      FASTGAN_BNA_DISPATCH_ACT(act, [&] {
        class_sums_kernel<scalar_t, kAct><<<unsigned(NC), kThreads, 0, stream>>>(
            gp, xp, C, l.S, x.numel() / NC, c123, NC, acc(alpha), part);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        class_bwd_coef_kernel<acc><<<channel_blocks(C), kThreads, 0, stream>>>(
            N, C, yp, part, training, M, var.const_data_ptr<acc>(), w.const_data_ptr<acc>(), opt_ptr<acc>(gm),
            opt_ptr<acc>(gv), eps, abc, dw.mutable_data_ptr<double>(), db.mutable_data_ptr<double>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        if (can_vectorize<kVec, scalar_t>(g, {gp, xp, gxp})) {
          bwd_apply_kernel<scalar_t, kAct, Ref::X, kVec><<<elementwise_blocks(g.numel / kVec), kThreads, 0, stream>>>(
              gp, xp, gxp, c123, abc, g, acc(alpha), acc(0));
        } else {
          bwd_apply_kernel<scalar_t, kAct, Ref::X, 1><<<elementwise_blocks(g.numel), kThreads, 0, stream>>>(
              gp, xp, gxp, c123, abc, g, acc(alpha), acc(0));
        }
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }

  static void update(at::Tensor& rm, at::Tensor& rv, const at::Tensor& mean, const at::Tensor& var,
                     const at::Tensor& nbt, double momentum, int64_t count) {
    const c10::cuda::CUDAGuard guard(rm.device());
    cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    const int64_t C = rm.numel();
    at::Tensor n = nbt.defined() ? nbt.to(at::kLong).contiguous() : at::Tensor();
    at::Tensor m = mean, v = var;
    if (m.scalar_type() != at::kDouble && m.scalar_type() != at::kFloat) m = m.to(at::kFloat);
    if (v.scalar_type() != m.scalar_type()) v = v.to(m.scalar_type());
    FASTGAN_DISPATCH_FLOATING(rm.scalar_type(), "batch_norm_act_update_stats_cuda", [&] {
      using rs_t = scalar_t;
      AT_DISPATCH_FLOATING_TYPES(m.scalar_type(), "batch_norm_act_update_stats_cuda_stat", [&] {
        update_kernel<rs_t, scalar_t><<<channel_blocks(C), kThreads, 0, stream>>>(
            rm.mutable_data_ptr<rs_t>(), rv.mutable_data_ptr<rs_t>(), m.const_data_ptr<scalar_t>(),
            v.const_data_ptr<scalar_t>(), n.defined() ? n.const_data_ptr<int64_t>() : nullptr, momentum, C,
            double(count));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> bna_cuda(
    const at::Tensor& x, const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
    const c10::optional<at::Tensor>& running_mean, const c10::optional<at::Tensor>& running_var, bool training,
    double eps, c10::string_view act, double alpha, bool /*keep_input*/) {
  const c10::cuda::CUDAGuard guard(x.device());
  return forward_impl<CudaKernels>(x, weight, bias, running_mean, running_var, training, eps, std::string(act), alpha);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bna_backward_cuda(
    const at::Tensor& grad, const at::Tensor& ref, const at::Tensor& mean, const at::Tensor& var,
    const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
    const c10::optional<at::Tensor>& grad_mean, const c10::optional<at::Tensor>& grad_var, bool training,
    double eps, c10::string_view act, double alpha, bool ref_is_output) {
  const c10::cuda::CUDAGuard guard(ref.device());
  return backward_impl<CudaKernels>(grad, ref, mean, var, weight, bias, grad_mean, grad_var, training, eps,
                                    std::string(act), alpha, ref_is_output);
}

void bna_update_cuda(at::Tensor& running_mean, at::Tensor& running_var, const at::Tensor& mean, const at::Tensor& var,
                     const c10::optional<at::Tensor>& num_batches_tracked, c10::optional<double> momentum,
                     int64_t count) {
  const c10::cuda::CUDAGuard guard(running_mean.device());
  update_impl<CudaKernels>(running_mean, running_var, mean, var, num_batches_tracked, momentum, count);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cbna_cuda(
    const at::Tensor& x, const at::Tensor& y, const at::Tensor& weight, const at::Tensor& bias,
    const c10::optional<at::Tensor>& running_mean, const c10::optional<at::Tensor>& running_var, bool training,
    double eps, c10::string_view act, double alpha) {
  return class_forward_impl<CudaKernels>(x, y, weight, bias, running_mean, running_var, training, eps,
                                         std::string(act), alpha);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cbna_backward_cuda(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& y, const at::Tensor& mean, const at::Tensor& var,
    const at::Tensor& weight, const at::Tensor& bias, const c10::optional<at::Tensor>& grad_mean,
    const c10::optional<at::Tensor>& grad_var, bool training, double eps, c10::string_view act, double alpha) {
  return class_backward_impl<CudaKernels>(grad, x, y, mean, var, weight, bias, grad_mean, grad_var, training, eps,
                                          std::string(act), alpha);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, CUDA, m) {
  m.impl("batch_norm_act", &bna_cuda);
  m.impl("batch_norm_act_backward", &bna_backward_cuda);
  m.impl("batch_norm_act_update_stats_", &bna_update_cuda);
  m.impl("class_batch_norm_act", &cbna_cuda);
  m.impl("class_batch_norm_act_backward", &cbna_backward_cuda);
}

}  // namespace batch_norm_act
}  // namespace fastgan
