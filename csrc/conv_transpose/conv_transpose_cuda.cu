// conv_transpose2d_act on CUDA.
//
// fused path: a tensor-core implicit-GEMM kernel (WMMA: bf16/fp16 with fp32 accumulation, or TF32
// for fp32 when torch.backends.cudnn.allow_tf32 permits) for
//   phase mode  channels_last x, dilation 1, groups 1, stride <= 4 (k4 s2 p1 is the DCGAN block):
//               grid z = the s*s phases; phase q is a dense GEMM M = N*Hq*Wq output pixels,
//               N = C_out, K = Ty*Tx*C_in (Ty = ceil(kH / s) taps), the A operand gathered from
//               the NHWC input on the fly (zero outside the image), B the phase-packed weight;
//   gemm mode   a 1x1 input with padding 0 (the first generator block, z -> 4x4): one GEMM
//               M = N, N = kH*kW*C_out, K = C_in, stored straight into either layout.
// The epilogue adds the bias, applies the activation, gain and clamp in registers and writes y, the
// backward's uint8 mask (or the pre-activation for softplus/swish/gelu) once.
// aten path: cuDNN's transposed convolution (through ATen) and the bias_act epilogue.
//
// Path policy (no blind trust in a kernel no one has timed on this GPU): FASTGAN_CONV_TRANSPOSE_PATH
// =auto (default) runs, at the first call of each shape outside CUDA-graph capture, both paths on
// the call's own inputs, compares the fused result with cuDNN's (a mismatch disables the fused
// kernel for that shape, with a warning), times both with CUDA events and caches the faster. That
// one-off tuning synchronises the host once per shape, as cudnn.benchmark does; every later call
// is asynchronous. During capture an untuned shape runs the aten path.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
#include <torch/library.h>

#include "common/cp_async.cuh"
#include "conv_transpose/conv_transpose.h"

namespace fastgan {
namespace conv_transpose {
namespace {

using namespace nvcuda;

constexpr int BM = 128, BN = 64, STAGES = 3, THREADS = 128, MAX_S = 4;

template <typename T> struct Mma;
template <> struct Mma<__nv_bfloat16> {
  using Frag = __nv_bfloat16;
  static constexpr int WK = 16, BK = 32, VEC = 8, PAD = 8;
};
template <> struct Mma<__half> {
  using Frag = __half;
  static constexpr int WK = 16, BK = 32, VEC = 8, PAD = 8;
};
// TF32 exists from sm_80 on (<mma.h> declares wmma::precision::tf32 only there): a build that also
// targets sm_75 compiles this specialisation in the host pass and the sm_80+ device passes only.
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
template <> struct Mma<float> {
  using Frag = wmma::precision::tf32;
  static constexpr int WK = 8, BK = 16, VEC = 4, PAD = 4;
};
#endif

struct KArgs {
  const void* x;      // NHWC (N, H, W, Cin)
  const void* wp;     // (Q, Kdim, Npad): wp[q][(ty*Tx + tx)*Cin + ci][col]
  const float* bias;  // bias[(col / Cdiv) % Cb], or null
  void* y;            // output element (row, col) at row_offset(row) + col
  uint8_t* mask;      // same offsets, or null
  void* pre;          // same offsets (pre-activation without bias), or null
  int64_t N, H, W, Cin, OH, OW, Ncols, Npad, Kdim, Cb, Cdiv;
  int sy, sx, Ty, Tx, Qx;
  int64_t hq[MAX_S], wq[MAX_S];  // phase output extents
  int64_t cy[MAX_S], cx[MAX_S];  // input row of tap 0 minus the phase output row
  int act;
  float alpha, gain, clamp;      // clamp < 0: none
};

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16(v);
}

__device__ __forceinline__ float act_rt(int a, float z, float alpha) {
  switch (static_cast<Act>(a)) {
    case Act::Linear: return bias_act::act_f<Act::Linear>(z, alpha);
    case Act::Relu: return bias_act::act_f<Act::Relu>(z, alpha);
    case Act::Lrelu: return bias_act::act_f<Act::Lrelu>(z, alpha);
    case Act::Tanh: return bias_act::act_f<Act::Tanh>(z, alpha);
    case Act::Sigmoid: return bias_act::act_f<Act::Sigmoid>(z, alpha);
    case Act::Elu: return bias_act::act_f<Act::Elu>(z, alpha);
    case Act::Selu: return bias_act::act_f<Act::Selu>(z, alpha);
    case Act::Softplus: return bias_act::act_f<Act::Softplus>(z, alpha);
    case Act::Swish: return bias_act::act_f<Act::Swish>(z, alpha);
    default: return bias_act::act_f<Act::Gelu>(z, alpha);
  }
}

// Output element offset of GEMM row m of phase (py, px); -1 past the phase's rows.
__device__ __forceinline__ int64_t row_offset(const KArgs& a, int64_t m, int64_t Mq, int py, int px) {
  if (m >= Mq) return -1;
  const int64_t hw = a.hq[py] * a.wq[px];
  const int64_t n = m / hw, rem = m - n * hw, j = rem / a.wq[px], i = rem - j * a.wq[px];
  const int64_t oy = py + int64_t(a.sy) * j, ox = px + int64_t(a.sx) * i;
  return ((n * a.OH + oy) * a.OW + ox) * a.Ncols;
}

template <typename T>
__global__ void __launch_bounds__(THREADS) convt_mma_kernel(const KArgs a) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // bf16/tf32 tensor cores and cp.async need sm_80; the host never launches this there
#else
  using C = Mma<T>;
  using Frag = typename C::Frag;
  constexpr int BK = C::BK, VEC = C::VEC, WK = C::WK;
  constexpr int LDA = BK + C::PAD, LDB = BN + C::PAD, LDC = BN + 4;
  constexpr int A_STAGE = BM * LDA, B_STAGE = BK * LDB;  // elements
  constexpr int PIPE_BYTES = STAGES * (A_STAGE + B_STAGE) * int(sizeof(T));
  constexpr int EPI_BYTES = BM * LDC * int(sizeof(float));
  constexpr int SMEM = PIPE_BYTES > EPI_BYTES ? PIPE_BYTES : EPI_BYTES;
  static_assert(BM == THREADS, "one tile row per thread in the epilogue set-up");
  __shared__ __align__(128) unsigned char smem[SMEM];
  __shared__ int64_t row_out[BM];
  T* As = reinterpret_cast<T*>(smem);
  T* Bs = As + STAGES * A_STAGE;
  const T* x = static_cast<const T*>(a.x);

  const int q = blockIdx.z, py = q / a.Qx, px = q % a.Qx;
  const int64_t hw = a.hq[py] * a.wq[px], Mq = a.N * hw;
  const int64_t m0 = int64_t(blockIdx.x) * BM;
  if (m0 >= Mq) return;  // this phase has fewer rows than the largest one
  const int64_t n0 = int64_t(blockIdx.y) * BN;
  const int tid = threadIdx.x, warp = tid / 32, wm = warp / 2, wn = warp % 2;  // warp tile 64 x 32

  // A tile: each thread copies one VEC-wide column chunk of A_PASSES rows.
  constexpr int A_VPR = BK / VEC, A_RPP = THREADS / A_VPR, A_PASSES = BM / A_RPP;
  const int a_col = (tid % A_VPR) * VEC;
  int64_t a_n[A_PASSES], a_iy[A_PASSES], a_ix[A_PASSES];
  bool a_ok[A_PASSES];
#pragma unroll
  for (int p = 0; p < A_PASSES; p++) {
    const int64_t m = m0 + tid / A_VPR + p * A_RPP;
    a_ok[p] = m < Mq;
    const int64_t mm = a_ok[p] ? m : 0;
    const int64_t n = mm / hw, rem = mm - n * hw, j = rem / a.wq[px], i = rem - j * a.wq[px];
    a_n[p] = n;
    a_iy[p] = j + a.cy[py];
    a_ix[p] = i + a.cx[px];
  }
  // B tile: rows of the packed weight, VEC-wide chunks.
  constexpr int B_VPR = BN / VEC, B_RPP = THREADS / B_VPR, B_PASSES = BK / B_RPP;
  const int b_col = (tid % B_VPR) * VEC;
  const T* wq_base = static_cast<const T*>(a.wp) + int64_t(q) * a.Kdim * a.Npad;

  auto load_tile = [&](int stage, int64_t kt) {
    const int64_t k0 = kt * BK;
    const int64_t kk = k0 + a_col;
    const bool k_ok = kk < a.Kdim;
    int64_t ci = 0, ty = 0, tx = 0;
    if (k_ok) {
      const int64_t t = kk / a.Cin;
      ci = kk - t * a.Cin;  // Cin % VEC == 0: a chunk never straddles two taps
      ty = t / a.Tx;
      tx = t - ty * a.Tx;
    }
    T* As_s = As + stage * A_STAGE;
#pragma unroll
    for (int p = 0; p < A_PASSES; p++) {
      const int r = tid / A_VPR + p * A_RPP;
      const int64_t iy = a_iy[p] - ty, ix = a_ix[p] - tx;
      const bool ok = k_ok && a_ok[p] && iy >= 0 && iy < a.H && ix >= 0 && ix < a.W;
      const T* src = ok ? x + ((a_n[p] * a.H + iy) * a.W + ix) * a.Cin + ci : x;
      cp_async16(As_s + r * LDA + a_col, src, ok);
    }
    T* Bs_s = Bs + stage * B_STAGE;
#pragma unroll
    for (int p = 0; p < B_PASSES; p++) {
      const int r = tid / B_VPR + p * B_RPP;
      const int64_t kg = k0 + r, col = n0 + b_col;
      const bool ok = kg < a.Kdim && col < a.Npad;
      const T* src = ok ? wq_base + kg * a.Npad + col : wq_base;
      cp_async16(Bs_s + r * LDB + b_col, src, ok);
    }
  };

  wmma::fragment<wmma::accumulator, 16, 16, WK, float> acc[4][2];
#pragma unroll
  for (int i = 0; i < 4; i++)
#pragma unroll
    for (int j = 0; j < 2; j++) wmma::fill_fragment(acc[i][j], 0.0f);

  const int64_t KT = (a.Kdim + BK - 1) / BK;
#pragma unroll
  for (int s = 0; s < STAGES - 1; s++) {
    if (s < KT) load_tile(s, s);
    cp_async_commit();
  }
  for (int64_t kt = 0; kt < KT; kt++) {
    cp_async_wait<STAGES - 2>();
    __syncthreads();  // tile kt landed for every thread; stage (kt - 1) % STAGES is free
    const int64_t nk = kt + STAGES - 1;
    if (nk < KT) load_tile(int(nk % STAGES), nk);
    cp_async_commit();
    const T* A = As + int(kt % STAGES) * A_STAGE;
    const T* B = Bs + int(kt % STAGES) * B_STAGE;
#pragma unroll
    for (int k = 0; k < BK; k += WK) {
      wmma::fragment<wmma::matrix_a, 16, 16, WK, Frag, wmma::row_major> fa[4];
      wmma::fragment<wmma::matrix_b, 16, 16, WK, Frag, wmma::row_major> fb[2];
#pragma unroll
      for (int i = 0; i < 4; i++) {
        wmma::load_matrix_sync(fa[i], A + (wm * 64 + i * 16) * LDA + k, LDA);
        if constexpr (std::is_same_v<T, float>) {
#pragma unroll
          for (int e = 0; e < fa[i].num_elements; e++) fa[i].x[e] = wmma::__float_to_tf32(fa[i].x[e]);
        }
      }
#pragma unroll
      for (int j = 0; j < 2; j++) {
        wmma::load_matrix_sync(fb[j], B + k * LDB + wn * 32 + j * 16, LDB);
        if constexpr (std::is_same_v<T, float>) {
#pragma unroll
          for (int e = 0; e < fb[j].num_elements; e++) fb[j].x[e] = wmma::__float_to_tf32(fb[j].x[e]);
        }
      }
#pragma unroll
      for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 2; j++) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
    }
  }
  cp_async_wait<0>();
  __syncthreads();  // the pipeline buffers become the epilogue tile

  float* Cs = reinterpret_cast<float*>(smem);
#pragma unroll
  for (int i = 0; i < 4; i++)
#pragma unroll
    for (int j = 0; j < 2; j++)
      wmma::store_matrix_sync(Cs + (wm * 64 + i * 16) * LDC + wn * 32 + j * 16, acc[i][j], LDC,
                              wmma::mem_row_major);
  row_out[tid] = row_offset(a, m0 + tid, Mq, py, px);
  __syncthreads();

  // Epilogue: consecutive threads take consecutive columns (channels): coalesced NHWC stores.
  T* y = static_cast<T*>(a.y);
  T* pre = static_cast<T*>(a.pre);
  const bool has_clamp = a.clamp >= 0.f;
  for (int e = tid; e < BM * BN; e += THREADS) {
    const int r = e / BN, c = e % BN;
    const int64_t col = n0 + c, base = row_out[r];
    if (base < 0 || col >= a.Ncols) continue;
    const int64_t o = base + col;
    const float v = Cs[r * LDC + c];
    if (pre) pre[o] = from_float<T>(v);
    const float z = v + (a.bias ? a.bias[(col / a.Cdiv) % a.Cb] : 0.f);
    float out = act_rt(a.act, z, a.alpha) * a.gain;
    if (a.mask) {
      uint8_t cls = (a.act == int(Act::Linear) || z > 0.f) ? 1 : 2;
      if (has_clamp && fabsf(out) > a.clamp) cls = 0;
      a.mask[o] = cls;
    }
    if (has_clamp) out = bias_act::clamp_(out, a.clamp);
    y[o] = from_float<T>(out);
  }
#endif
}

// ---- host side ---------------------------------------------------------------------------------
enum class Mode { None, Phase, Gemm };

int vec_of(at::ScalarType t) { return t == at::kFloat ? 4 : 8; }

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Which mode of the fused kernel can run this call; `why` says why not.
Mode fused_mode(const at::Tensor& x, const at::Tensor& w, const Geometry& g, std::string* why) {
  const auto dt = x.scalar_type();
  if (!(dt == at::kHalf || dt == at::kBFloat16 || (dt == at::kFloat && at::globalContext().allowTF32CuDNN()))) {
    *why = "dtype must be float16, bfloat16, or float32 with torch.backends.cudnn.allow_tf32";
    return Mode::None;
  }
  if (at::cuda::getDeviceProperties(x.get_device())->major < 8) {
    *why = "needs compute capability 8.0 or newer";
    return Mode::None;
  }
  if (g.G != 1 || g.d[0] != 1 || g.d[1] != 1) {
    *why = "needs groups 1 and dilation 1";
    return Mode::None;
  }
  if (g.Cin % vec_of(dt) != 0 || !aligned16(x.const_data_ptr())) {
    *why = "needs in_channels divisible by " + std::to_string(vec_of(dt)) + " and a 16-byte aligned input";
    return Mode::None;
  }
  const int64_t big = int64_t(1) << 30;
  if (g.N * g.H * g.W > big || g.KH * g.KW * g.Cout > big) {
    *why = "problem too large for one launch";
    return Mode::None;
  }
  Mode mode = Mode::Phase;
  if (g.H == 1 && g.W == 1 && g.p[0] == 0 && g.p[1] == 0 && g.op[0] == 0 && g.op[1] == 0 &&
      (x.size(0) == 1 || (x.stride(1) == 1 && x.stride(0) == g.Cin))) {
    mode = Mode::Gemm;
  } else if (!strictly_channels_last(x) || !channels_last_out(x, w)) {
    *why = "needs a channels_last input";
    return Mode::None;
  } else if (g.s[0] > MAX_S || g.s[1] > MAX_S) {
    *why = "needs stride <= 4";
    return Mode::None;
  }
  // The output columns are the grid's y dimension (at most 65535 blocks of BN).
  const int64_t ncols = mode == Mode::Gemm ? g.KH * g.KW * g.Cout : g.Cout;
  if ((ncols + BN - 1) / BN > 65535) {
    *why = "too many output columns for one launch (kernel_h * kernel_w * out_channels > " +
           std::to_string(int64_t(65535) * BN) + " in the 1x1-input case)";
    return Mode::None;
  }
  return mode;
}

// ---- the packed weight ---------------------------------------------------------------------------
// The kernel reads the weight as (Q, Kdim, Npad): per phase, rows (ty, tx, ci) and Npad columns, padded
// to the vector width. Packing costs a few launches and a copy, so the result is kept for the next
// calls with the same weight tensor (the same TensorImpl, held weakly, the same data pointer and the
// same version counter: any in-place update repacks). Not during CUDA-graph capture, where the
// packing must be recorded with the graph (the weight may change between replays).
struct Packed {
  at::Tensor wp;
  int64_t Q = 1, Kdim = 0, ncols = 0, npad = 0;
};

Packed pack_weight(const at::Tensor& w, const Geometry& g, Mode mode, bool cl, int vec) {
  Packed pk;
  at::Tensor wp;
  if (mode == Mode::Gemm) {
    // out[n, col]: col = (ky, kx, co) in channels_last, (co, ky, kx) in NCHW.
    wp = cl ? w.permute({0, 2, 3, 1}).reshape({1, g.Cin, g.KH * g.KW * g.Cout})
            : w.contiguous().reshape({1, g.Cin, g.Cout * g.KH * g.KW});
    pk.Kdim = g.Cin;
  } else {
    const PhaseDim dy = make_phase_dim(g.H, g.OH, g.KH, g.s[0], g.p[0]);
    const PhaseDim dx = make_phase_dim(g.W, g.OW, g.KW, g.s[1], g.p[1]);
    // Phase (py, px) takes kernel rows ky0[py] + s*ty and columns kx0[px] + s*tx.
    const at::Tensor wpad = at::constant_pad_nd(w.contiguous(), {0, dx.T * dx.s - g.KW, 0, dy.T * dy.s - g.KH});
    const at::Tensor v = wpad.view({g.Cin, g.Cout, dy.T, dy.s, dx.T, dx.s}).permute({3, 5, 2, 4, 0, 1});
    std::vector<at::Tensor> phases;
    for (int64_t qy = 0; qy < dy.s; qy++)
      for (int64_t qx = 0; qx < dx.s; qx++) phases.push_back(v[dy.ky0[qy]][dx.ky0[qx]]);
    pk.Q = dy.s * dx.s;
    wp = at::stack(phases).reshape({pk.Q, dy.T * dx.T * g.Cin, g.Cout});
    pk.Kdim = dy.T * dx.T * g.Cin;
  }
  pk.ncols = wp.size(2);
  pk.npad = (pk.ncols + vec - 1) / vec * vec;
  wp = (pk.npad == pk.ncols ? wp : at::constant_pad_nd(wp, {0, pk.npad - pk.ncols})).contiguous();
  // A reshape of a contiguous weight is a view of it, at whatever address the user's storage has
  // (e.g. a view into one flat buffer of parameters): the kernel's 16-byte cp.async needs 16.
  if (!aligned16(wp.const_data_ptr())) wp = wp.clone();
  pk.wp = wp;
  return pk;
}

class PackCache {
 public:
  static PackCache& get() {
    static PackCache* c = new PackCache;  // never destroyed: tensors must not outlive CUDA at exit
    return *c;
  }
  Packed lookup_or_pack(const at::Tensor& w, const std::string& key, const Geometry& g, Mode mode, bool cl,
                        int vec) {
    const int64_t version = w.unsafeGetTensorImpl()->version_counter().current_version();
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (Entry& e : entries_) {
        auto alive = e.impl.lock();
        if (alive.get() == w.unsafeGetTensorImpl() && e.data == w.const_data_ptr() && e.version == version &&
            e.key == key)
          return e.packed;
      }
    }
    Packed pk = pack_weight(w, g, mode, cl, vec);
    std::lock_guard<std::mutex> lock(mu_);
    // Entries whose weight is gone or was updated are useless: drop them, and keep the cache small.
    std::vector<Entry> kept;
    for (Entry& e : entries_)
      if (!e.impl.expired() && !(e.impl.lock().get() == w.unsafeGetTensorImpl() && e.key == key)) kept.push_back(e);
    if (kept.size() >= kMax) kept.erase(kept.begin());
    kept.push_back({c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>(w.getIntrusivePtr()),
                    w.const_data_ptr(), version, key, pk});
    entries_.swap(kept);
    return pk;
  }

 private:
  struct Entry {
    c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl> impl;
    const void* data;
    int64_t version;
    std::string key;
    Packed packed;
  };
  static constexpr size_t kMax = 64;
  std::mutex mu_;
  std::vector<Entry> entries_;
};

bool capturing() {
  cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(at::cuda::getCurrentCUDAStream(), &st));
  return st != cudaStreamCaptureStatusNone;
}

std::tuple<at::Tensor, at::Tensor> call_fused(const at::Tensor& x, const at::Tensor& w,
                                              const c10::optional<at::Tensor>& b, const Geometry& g,
                                              const Params& p, Mode mode, const std::string& key) {
  const auto fmt = out_format(x, w);
  const auto opts = x.options().memory_format(fmt);
  at::Tensor y = at::empty({g.N, g.Cout, g.OH, g.OW}, opts);
  at::Tensor mask = p.ref == Ref::Mask ? at::empty({g.N, g.Cout, g.OH, g.OW}, opts.dtype(at::kByte))
                                       : at::empty({0}, x.options().dtype(at::kByte));
  at::Tensor pre = p.ref == Ref::X ? at::empty({g.N, g.Cout, g.OH, g.OW}, opts) : at::empty({0}, x.options());
  const int vec = vec_of(x.scalar_type());
  const bool cl = fmt == at::MemoryFormat::ChannelsLast;
  const Packed pk = capturing() ? pack_weight(w, g, mode, cl, vec)
                                : PackCache::get().lookup_or_pack(w, key, g, mode, cl, vec);
  KArgs a{};
  int64_t Mmax = 0;
  if (mode == Mode::Gemm) {
    a.H = a.W = 1;
    a.OH = a.OW = 1;
    a.Ncols = g.KH * g.KW * g.Cout;
    a.Cdiv = cl ? 1 : g.KH * g.KW;
    a.sy = a.sx = 1;
    a.Ty = a.Tx = 1;
    a.Qx = 1;
    a.hq[0] = a.wq[0] = 1;
    a.cy[0] = a.cx[0] = 0;
    Mmax = g.N;
  } else {
    const PhaseDim dy = make_phase_dim(g.H, g.OH, g.KH, g.s[0], g.p[0]);
    const PhaseDim dx = make_phase_dim(g.W, g.OW, g.KW, g.s[1], g.p[1]);
    a.H = g.H;
    a.W = g.W;
    a.OH = g.OH;
    a.OW = g.OW;
    a.Ncols = g.Cout;
    a.Cdiv = 1;
    a.sy = int(dy.s);
    a.sx = int(dx.s);
    a.Ty = int(dy.T);
    a.Tx = int(dx.T);
    a.Qx = int(dx.s);
    for (int64_t r = 0; r < dy.s; r++) {
      a.hq[r] = dy.len[r];
      a.cy[r] = dy.c[r];
    }
    for (int64_t r = 0; r < dx.s; r++) {
      a.wq[r] = dx.len[r];
      a.cx[r] = dx.c[r];
    }
    for (int64_t r = 0; r < dy.s; r++)
      for (int64_t c = 0; c < dx.s; c++) Mmax = std::max(Mmax, g.N * dy.len[r] * dx.len[c]);
  }
  a.Kdim = pk.Kdim;
  at::Tensor bacc;
  if (b.has_value()) bacc = b->to(at::kFloat).contiguous();
  a.x = x.const_data_ptr();
  a.wp = pk.wp.const_data_ptr();
  a.bias = bacc.defined() ? bacc.const_data_ptr<float>() : nullptr;
  a.y = y.mutable_data_ptr();
  a.mask = mask.numel() ? mask.mutable_data_ptr<uint8_t>() : nullptr;
  a.pre = pre.numel() ? pre.mutable_data_ptr() : nullptr;
  a.N = g.N;
  a.Cin = g.Cin;
  a.Npad = pk.npad;
  a.Cb = g.Cout;
  a.act = int(p.act);
  a.alpha = float(p.alpha);
  a.gain = float(p.gain);
  a.clamp = float(p.clamp);
  const dim3 grid(unsigned((Mmax + BM - 1) / BM), unsigned((a.Ncols + BN - 1) / BN), unsigned(pk.Q));
  TORCH_CHECK(grid.y <= 65535, "fastgan: conv_transpose2d_act: too many output columns for one launch");
  auto stream = at::cuda::getCurrentCUDAStream();
  switch (x.scalar_type()) {
    case at::kHalf: convt_mma_kernel<__half><<<grid, THREADS, 0, stream>>>(a); break;
    case at::kBFloat16: convt_mma_kernel<__nv_bfloat16><<<grid, THREADS, 0, stream>>>(a); break;
    default: convt_mma_kernel<float><<<grid, THREADS, 0, stream>>>(a); break;
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (p.ref == Ref::Mask) return {y, mask};
  return {y, p.ref == Ref::X ? pre : at::empty({0}, x.options())};
}

// ---- the first-use check ------------------------------------------------------------------------
// The fused kernel's outputs against the aten path's on the call's own inputs, element by element:
// both accumulate K = Cin * taps products in fp32 (from TF32-rounded operands for float32), so they
// may differ by a few ulps of |x| * |w|, the absolute convolution, in every element; y then also by
// the rounding of the output dtype, and of the aten path's convolution output before its epilogue. y, the backward's mask (away from the decision boundaries, where
// the two roundings may fall either way) and the pre-activation (softplus/swish/gelu) must agree.
// Inputs that cannot tell (all zeros, or not finite) decide nothing: the next call checks again.
enum class Verdict { Agree, Disagree, Inconclusive };

double unit_roundoff(at::ScalarType t) {
  return t == at::kBFloat16 ? std::ldexp(1.0, -8) : t == at::kHalf ? std::ldexp(1.0, -11) : std::ldexp(1.0, -24);
}

Verdict verify(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& b, const Geometry& g,
               const Params& p, Mode mode, const std::tuple<at::Tensor, at::Tensor>& fused,
               const std::tuple<at::Tensor, at::Tensor>& aten, std::string* detail) {
  const at::Tensor xf = x.to(at::kFloat), wf = w.to(at::kFloat);
  if (!xf.isfinite().all().item<bool>() || !wf.isfinite().all().item<bool>() || xf.abs().max().item<float>() == 0 ||
      wf.abs().max().item<float>() == 0) {
    *detail = "inputs all zero or not finite";
    return Verdict::Inconclusive;
  }
  const auto conv = [&](const at::Tensor& xi, const at::Tensor& wi, const c10::optional<at::Tensor>& bi) {
    return at::conv_transpose2d(xi, wi, bi, {g.s[0], g.s[1]}, {g.p[0], g.p[1]}, {g.op[0], g.op[1]}, g.G,
                                {g.d[0], g.d[1]}).to(at::kDouble);
  };
  const at::Tensor absconv = conv(xf.abs(), wf.abs(), c10::nullopt);
  // products per output: Cin (1x1 input) or Cin times the taps of one phase
  const double K = mode == Mode::Gemm ? double(g.Cin)
                                      : double(g.Cin) * double((g.KH + g.s[0] - 1) / g.s[0]) *
                                            double((g.KW + g.s[1] - 1) / g.s[1]);
  const double eps_in = x.scalar_type() == at::kFloat ? std::ldexp(1.0, -10) : 0.0;  // TF32 operands
  const at::Tensor tol_pre = (4 * eps_in + 2 * K * std::ldexp(1.0, -24)) * absconv + 1e-30;
  // |act'| <= 1.2 for every activation but selu (1.0507 * 1.6733 below zero).
  const double lip = (p.act == Act::Selu ? 1.76 : 1.2) * std::abs(p.gain);
  const double u = unit_roundoff(x.scalar_type());
  const at::Tensor ya = std::get<0>(aten).to(at::kDouble), yf = std::get<0>(fused).to(at::kDouble);
  // the aten path also rounds the convolution's output to the dtype before its epilogue
  const at::Tensor tol_y = lip * (tol_pre + u * absconv) + 2 * u * ya.abs() + 1e-30;
  const at::Tensor bad_y = (yf - ya).abs() > tol_y;
  if (bad_y.any().item<bool>()) {
    const int64_t n = bad_y.sum().item<int64_t>();
    *detail = std::to_string(n) + " of " + std::to_string(ya.numel()) + " outputs differ beyond the rounding " +
              "bound (largest difference " + std::to_string((yf - ya).abs().max().item<double>()) + ")";
    return Verdict::Disagree;
  }
  if (p.ref == Ref::Mask || p.ref == Ref::X) {
    const at::Tensor z = conv(xf, wf, b.has_value() ? c10::optional<at::Tensor>(b->to(at::kFloat)) : c10::nullopt);
    if (p.ref == Ref::Mask) {
      // the class may differ where z is within its error of 0, or |y| within its error of the clamp
      const at::Tensor out = p.clamp >= 0 ? (ya.abs() - p.clamp).abs() : at::full_like(ya, 1e30);
      const at::Tensor certain = (z.abs() > (tol_pre + u * absconv) * 2) & (out > tol_y * 2);
      const at::Tensor mf = std::get<1>(fused), ma = std::get<1>(aten);
      if (!at::equal(mf.masked_select(certain), ma.masked_select(certain))) {
        *detail = "the backward's mask differs";
        return Verdict::Disagree;
      }
    } else {
      const at::Tensor za = conv(xf, wf, c10::nullopt);
      const at::Tensor pf = std::get<1>(fused).to(at::kDouble);
      if (((pf - za).abs() > tol_pre + u * za.abs()).any().item<bool>()) {
        *detail = "the pre-activation kept for the backward differs";
        return Verdict::Disagree;
      }
    }
  }
  return Verdict::Agree;
}

// CUDA events that are destroyed however the timing ends.
struct Event {
  cudaEvent_t e = nullptr;
  Event() { C10_CUDA_CHECK(cudaEventCreate(&e)); }
  ~Event() {
    if (e) C10_CUDA_CHECK_WARN(cudaEventDestroy(e));
  }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
};

std::tuple<at::Tensor, at::Tensor> conv_transpose2d_act_cuda(
    const at::Tensor& x_in, const at::Tensor& w, const c10::optional<at::Tensor>& b, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef output_padding, int64_t groups, at::IntArrayRef dilation,
    c10::string_view act_sv, double alpha, double gain, double clamp) {
  const std::string act(act_sv);
  Geometry g = make_geometry(x_in, w, b, stride, padding, output_padding, groups, dilation);
  c10::cuda::CUDAGuard guard(x_in.device());
  Params p = bias_act::make_params(x_in, 1, act, alpha, gain, clamp, false);
  p.dim = 1;
  const at::Tensor x = x_in.is_non_overlapping_and_dense()
                           ? x_in
                           : x_in.contiguous(strictly_channels_last(x_in) ? at::MemoryFormat::ChannelsLast
                                                                          : at::MemoryFormat::Contiguous);
  if (g.N == 0 || g.Cin == 0 || g.Cout == 0) return run_aten(x, w, b, g, p, act);
  std::string why;
  const Mode mode = fused_mode(x, w, g, &why);
  const std::string key = shape_key("cuda", x, w, b.has_value(), g, int(p.ref), act, clamp,
                                    int(x.get_device()) * 2 + int(at::globalContext().allowTF32CuDNN()));
  Path path = forced_path();
  if (path == Path::Fused) {
    TORCH_CHECK(mode != Mode::None, "fastgan: FASTGAN_CONV_TRANSPOSE_PATH=fused, but the CUDA fused kernel ",
                why);
    return call_fused(x, w, b, g, p, mode, key);
  }
  if (path == Path::Aten || path == Path::AtenCl || mode == Mode::None) return run_aten(x, w, b, g, p, act);
  auto& cache = PathCache::get();
  if (cache.lookup(key, &path)) {
    return path == Path::Fused ? call_fused(x, w, b, g, p, mode, key) : run_aten(x, w, b, g, p, act);
  }
  if (capturing()) return run_aten(x, w, b, g, p, act);  // never tune (sync) inside a graph capture
  // First call of this shape: check the kernel against the aten path on these inputs, then time both.
  auto out_aten = run_aten(x, w, b, g, p, act);
  auto out_fused = call_fused(x, w, b, g, p, mode, key);
  std::string detail;
  const Verdict v = verify(x, w, b, g, p, mode, out_fused, out_aten, &detail);
  if (v == Verdict::Inconclusive) {
    if (verbose()) {
      std::fprintf(stderr, "fastgan conv_transpose2d_act: %s -> undecided (%s)\n", key.c_str(), detail.c_str());
    }
    return out_aten;
  }
  if (v == Verdict::Disagree) {
    TORCH_WARN("fastgan: conv_transpose2d_act's fused CUDA kernel disagreed with cuDNN (", detail, ") for ", key,
               "; using cuDNN for this shape. Please report this.");
    cache.store(key, Path::Aten, 0, 0, "(fused kernel disagreed with cuDNN)");
    return out_aten;
  }
  // Deterministic algorithms asked for: no timing, so that the choice (and the bits) do not depend on
  // the machine's load. The fused kernel is deterministic (a fixed reduction order per element).
  if (at::globalContext().deterministicAlgorithms() || at::globalContext().deterministicCuDNN()) {
    cache.store(key, Path::Fused, 0, 0, "(deterministic algorithms: checked, not timed)");
    return out_fused;
  }
  auto stream = at::cuda::getCurrentCUDAStream();
  Event ev[3];
  float t_aten = 1e30f, t_fused = 1e30f;
  for (int rep = 0; rep < 5; rep++) {
    C10_CUDA_CHECK(cudaEventRecord(ev[0].e, stream));
    out_fused = call_fused(x, w, b, g, p, mode, key);
    C10_CUDA_CHECK(cudaEventRecord(ev[1].e, stream));
    out_aten = run_aten(x, w, b, g, p, act);
    C10_CUDA_CHECK(cudaEventRecord(ev[2].e, stream));
    C10_CUDA_CHECK(cudaEventSynchronize(ev[2].e));
    float tf = 0, ta = 0;
    C10_CUDA_CHECK(cudaEventElapsedTime(&tf, ev[0].e, ev[1].e));
    C10_CUDA_CHECK(cudaEventElapsedTime(&ta, ev[1].e, ev[2].e));
    t_fused = std::min(t_fused, tf);
    t_aten = std::min(t_aten, ta);
  }
  const bool fused = t_fused < t_aten;
  cache.store(key, fused ? Path::Fused : Path::Aten, t_aten * 1e-3, t_fused * 1e-3,
              mode == Mode::Gemm ? "(gemm mode)" : "(phase mode)");
  return fused ? out_fused : out_aten;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, CUDA, m) { m.impl("conv_transpose2d_act", &conv_transpose2d_act_cuda); }

}  // namespace conv_transpose
}  // namespace fastgan
