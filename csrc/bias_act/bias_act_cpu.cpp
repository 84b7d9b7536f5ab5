// bias_act on the CPU: at::parallel_for over flat memory, at::vec inside.
//
// Memory is [A][C][S] (common/layout.h). A chunk of it is walked as runs that share one bias
// value (S > 1, e.g. NCHW) or that step through consecutive channels (S == 1, channels_last);
// each run is processed in blocks of one Vectorized<acc_t>, gathered through a small buffer so
// that fp16/bf16 and float share one code path.
#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <torch/library.h>

#include <vector>

#include "bias_act/bias_act.h"
#include "common/autograd.h"
#include "common/cpu_loops.h"

namespace fastgan {
namespace bias_act {
namespace {

constexpr int64_t kGrain = 16384;

using cpu::for_each_run;

// Mask bytes <-> class vectors (the classes are 0, 1, 2 held as floats).
template <class acc>
inline void store_mask(const Vec<acc>& cls, uint8_t* dst) {
#if defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<acc, float>) {
    __m256i i32 = _mm256_cvttps_epi32(cls);
    __m128i i16 = _mm_packs_epi32(_mm256_castsi256_si128(i32), _mm256_extracti128_si256(i32, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(dst), _mm_packus_epi16(i16, i16));
    return;
  }
#endif
  alignas(64) acc buf[Vec<acc>::size()];
  cls.store(buf);
  for (int j = 0; j < Vec<acc>::size(); j++) dst[j] = uint8_t(buf[j]);
}

template <class acc>
inline Vec<acc> load_mask(const uint8_t* src) {
#if defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<acc, float>) {
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(src))));
  }
#endif
  alignas(64) acc buf[Vec<acc>::size()];
  for (int j = 0; j < Vec<acc>::size(); j++) buf[j] = acc(src[j]);
  return Vec<acc>::loadu(buf);
}

// Mask classes (0, 1, 2 as floats) of a vector: see mask_class in bias_act.h.
template <Act A, class V>
inline V mask_classes(const V& pre, const V& out, const V& vclamp, bool has_clamp) {
  V cls = A == Act::Linear ? V(1) : sel(pre > V(0), V(1), V(2));
  return has_clamp ? sel(out.abs() > vclamp, V(0), cls) : cls;
}

// One run of forward: len elements, bias either one value (bvec == nullptr) or bvec[i].
// Written as a plain function over local values so that the compiler keeps them in registers.
template <Act A, typename scalar_t>
void forward_run(const scalar_t* x, scalar_t* y, uint8_t* mask, const acc_t<scalar_t>* bvec,
                 acc_t<scalar_t> bconst, int64_t len, acc_t<scalar_t> alpha, acc_t<scalar_t> gain,
                 acc_t<scalar_t> clamp) {
  using acc = acc_t<scalar_t>;
  using V = Vec<acc>;
  constexpr int64_t K = V::size();
  constexpr bool kDirect = std::is_same_v<acc, scalar_t>;  // float/double: load and store directly
  const V valpha(alpha), vgain(gain), vclamp(clamp), vb(bconst);
  const bool has_clamp = clamp >= 0;
  alignas(64) acc buf[K];
  int64_t i = 0;
  if constexpr (kDirect) {
    for (; i + K <= len; i += K) {
      V pre = V::loadu(x + i) + (bvec ? V::loadu(bvec + i) : vb);
      V out = act_f<A>(pre, valpha) * vgain;
      if (mask) store_mask<acc>(mask_classes<A>(pre, out, vclamp, has_clamp), mask + i);
      (has_clamp ? clamp_(out, vclamp) : out).store(y + i);
    }
  }
  for (; i < len; i += K) {
    const int n = int(std::min<int64_t>(K, len - i));
    for (int j = 0; j < n; j++) buf[j] = acc(x[i + j]);
    V pre = V::loadu(buf, n) + (bvec ? V::loadu(bvec + i, n) : vb);
    V out = act_f<A>(pre, valpha) * vgain;
    if (mask) {
      mask_classes<A>(pre, out, vclamp, has_clamp).store(buf, n);
      for (int j = 0; j < n; j++) mask[i + j] = uint8_t(buf[j]);
    }
    (has_clamp ? clamp_(out, vclamp) : out).store(buf, n);
    for (int j = 0; j < n; j++) y[i + j] = scalar_t(buf[j]);
  }
}

template <typename scalar_t, Act A>
void forward_loop(const at::Tensor& x, const at::Tensor& b, at::Tensor& y, at::Tensor& mask,
                  const ChannelLayout& l, const Params& p) {
  using acc = acc_t<scalar_t>;
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  scalar_t* yp = y.mutable_data_ptr<scalar_t>();
  uint8_t* mp = mask.numel() ? mask.mutable_data_ptr<uint8_t>() : nullptr;
  const acc* bp = b.defined() ? b.const_data_ptr<acc>() : nullptr;
  const acc alpha = acc(p.alpha), gain = acc(p.gain), clamp = acc(p.clamp);
  at::parallel_for(0, x.numel(), kGrain, [&](int64_t begin, int64_t end) {
    for_each_run(l, begin, end, [&](int64_t m, int64_t len, int64_t c, int64_t bs) {
      forward_run<A, scalar_t>(xp + m, yp + m, mp ? mp + m : nullptr, bp && bs ? bp + c : nullptr,
                               bp && !bs ? bp[c] : acc(0), len, alpha, gain, clamp);
    });
  });
}

// One run of backward: gx = g * factor(ref). Returns the sum of gx when part == nullptr and
// bias sums are wanted (constant-channel run); with part, adds gx[i] to part[i] (channel run).
template <Act A, Ref R, typename scalar_t>
double backward_run(const scalar_t* g, const void* ref, scalar_t* gx, const acc_t<scalar_t>* bvec,
                    acc_t<scalar_t> bconst, int64_t len, acc_t<scalar_t> alpha, acc_t<scalar_t> gain,
                    acc_t<scalar_t> clamp, bool want_sum, double* part) {
  using acc = acc_t<scalar_t>;
  using V = Vec<acc>;
  constexpr int64_t K = V::size();
  constexpr bool kDirect = std::is_same_v<acc, scalar_t>;
  const V valpha(alpha), vgain(gain), vclamp(clamp), vb(bconst);
  const bool has_clamp = clamp >= 0, gain_zero = gain == 0;
  const uint8_t* mref = static_cast<const uint8_t*>(ref);
  const scalar_t* tref = static_cast<const scalar_t*>(ref);
  alignas(64) acc buf[K];
  V sum(0);
  auto load = [&](const scalar_t* ptr, int n) {
    if (kDirect && n == K) return V::loadu(ptr);
    for (int j = 0; j < n; j++) buf[j] = acc(ptr[j]);
    return V::loadu(buf, n);
  };
  for (int64_t i = 0; i < len; i += K) {
    const int n = int(std::min<int64_t>(K, len - i));
    V r(0);
    if constexpr (R == Ref::Mask) {
      if (n == K) {
        r = load_mask<acc>(mref + i);
      } else {
        for (int j = 0; j < n; j++) buf[j] = acc(mref[i + j]);
        r = V::loadu(buf, n);
      }
    } else if constexpr (R == Ref::Y) {
      r = load(tref + i, n);
    } else if constexpr (R == Ref::X) {
      r = load(tref + i, n) + (bvec ? V::loadu(bvec + i, n) : vb);
    }
    V d = grad_factor<A, R>(r, valpha, vgain, vclamp, has_clamp, gain_zero) * load(g + i, n);
    if (kDirect && n == K) {
      d.store(gx + i);
    } else {
      d.store(buf, n);
      for (int j = 0; j < n; j++) gx[i + j] = scalar_t(buf[j]);
      d = V::set(V(0), d, n);  // zero the lanes past the end
    }
    if (part) {
      d.store(buf);
      for (int j = 0; j < n; j++) part[i + j] += buf[j];
    } else if (want_sum) {
      sum = sum + d;
    }
  }
  if (!want_sum || part) return 0;
  sum.store(buf);
  double t = 0;
  for (int j = 0; j < K; j++) t += buf[j];
  return t;
}

template <typename scalar_t, Act A, Ref R>
void backward_loop(const at::Tensor& g, const at::Tensor& ref, const at::Tensor& b, at::Tensor& gx,
                   at::Tensor& gb, const ChannelLayout& l, const Params& p) {
  using acc = acc_t<scalar_t>;
  const scalar_t* gp = g.const_data_ptr<scalar_t>();
  scalar_t* gxp = gx.mutable_data_ptr<scalar_t>();
  const int64_t esize = R == Ref::Mask ? 1 : int64_t(sizeof(scalar_t));
  const char* rp = R == Ref::None ? nullptr : static_cast<const char*>(ref.const_data_ptr());
  const acc* bp = (R == Ref::X && b.defined()) ? b.const_data_ptr<acc>() : nullptr;
  const acc alpha = acc(p.alpha), gain = acc(p.gain), clamp = acc(p.clamp);
  // Per-thread partial sums of the bias gradient, in double.
  const bool want_gb = gb.defined();
  const int nthreads = at::get_num_threads();
  std::vector<double> partial(want_gb ? size_t(nthreads) * l.C : 0, 0.0);
  at::parallel_for(0, g.numel(), kGrain, [&](int64_t begin, int64_t end) {
    double* part = want_gb ? partial.data() + size_t(at::get_thread_num()) * l.C : nullptr;
    for_each_run(l, begin, end, [&](int64_t m, int64_t len, int64_t c, int64_t bs) {
      double s = backward_run<A, R, scalar_t>(
          gp + m, rp ? rp + m * esize : nullptr, gxp + m, bp && bs ? bp + c : nullptr,
          bp && !bs ? bp[c] : acc(0), len, alpha, gain, clamp, want_gb, part && bs ? part + c : nullptr);
      if (part && !bs) part[c] += s;
    });
  });
  if (want_gb) {
    acc* out = gb.mutable_data_ptr<acc>();
    for (int64_t c = 0; c < l.C; c++) {
      double s = 0;
      for (int t = 0; t < nthreads; t++) s += partial[size_t(t) * l.C + c];
      out[c] = acc(s);
    }
  }
}

struct CpuKernels {
  static void forward(const at::Tensor& x, const at::Tensor& b, at::Tensor& y, at::Tensor& mask,
                      const ChannelLayout& l, const Params& p) {
    FASTGAN_DISPATCH_FLOATING(x.scalar_type(), "bias_act_cpu", [&] {
      FASTGAN_DISPATCH_ACT(p.act, [&] { forward_loop<scalar_t, kAct>(x, b, y, mask, l, p); });
    });
  }
  static void backward(const at::Tensor& g, const at::Tensor& ref, const at::Tensor& b, at::Tensor& gx,
                       at::Tensor& gb, const ChannelLayout& l, const Params& p) {
    FASTGAN_DISPATCH_FLOATING(g.scalar_type(), "bias_act_backward_cpu", [&] {
      FASTGAN_DISPATCH_ACT(p.act, [&] {
        switch (p.ref) {
          case Ref::None: return backward_loop<scalar_t, kAct, Ref::None>(g, ref, b, gx, gb, l, p);
          case Ref::Mask: return backward_loop<scalar_t, kAct, Ref::Mask>(g, ref, b, gx, gb, l, p);
          case Ref::Y: return backward_loop<scalar_t, kAct, Ref::Y>(g, ref, b, gx, gb, l, p);
          default: return backward_loop<scalar_t, kAct, Ref::X>(g, ref, b, gx, gb, l, p);
        }
      });
    });
  }
};

// Autocast: run in x's dtype (a float32 bias parameter is cast to x's dtype, as under autocast a
// Linear/Conv output arrives in fp16/bf16 while the bias stays fp32).
std::tuple<at::Tensor, at::Tensor> bias_act_autocast(const at::Tensor& x, const c10::optional<at::Tensor>& b,
                                                     int64_t dim, c10::string_view act, double alpha,
                                                     double gain, double clamp) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  c10::optional<at::Tensor> bb = b;
  if (b.has_value() && at::isFloatingType(x.scalar_type()) && b->scalar_type() != x.scalar_type()) {
    bb = b->to(x.scalar_type());
  }
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastgan::bias_act", "")
                       .typed<decltype(bias_act_autocast)>();
  return op.call(x, bb, dim, act, alpha, gain, clamp);
}

// ---- autograd (device independent; lives here because this file is compiled in every build) ----
// In C++ rather than torch.library.register_autograd: at small tensors (a DCGAN's 4x4 layers) the
// Python autograd path cost more than the kernel, forward and backward. The backward op is itself
// differentiable: its grad-gradient is the same op again (it is linear in grad), its ref-gradient
// is the activation's second derivative (ATen ops below; zero for the piecewise-linear ones).
using ForwardSig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const c10::optional<at::Tensor>&, int64_t,
                                                      c10::string_view, double, double, double);
using BackwardSig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                       const c10::optional<at::Tensor>&, int64_t, c10::string_view,
                                                       double, double, double, bool);

// Through the dispatcher (autograd, tracing and device dispatch all apply).
std::tuple<at::Tensor, at::Tensor> call_backward(const at::Tensor& grad, const at::Tensor& ref,
                                                 const c10::optional<at::Tensor>& b, int64_t dim,
                                                 const std::string& act, double alpha, double gain, double clamp,
                                                 bool bias_grad) {
  static auto op = find_op<BackwardSig>("fastgan::bias_act_backward");
  return op.call(grad, ref, b, dim, act, alpha, gain, clamp, bias_grad);
}

std::vector<int64_t> channel_shape(int64_t ndim, int64_t dim) {
  std::vector<int64_t> shape(size_t(ndim), 1);
  shape[size_t(dim)] = -1;
  return shape;
}

int64_t wrapped(int64_t dim, int64_t ndim) { return dim < 0 ? dim + ndim : dim; }

struct Saved {
  int64_t dim;
  std::string act;
  double alpha, gain, clamp;
  static void put(AutogradContext* ctx, int64_t dim, const std::string& act, double alpha, double gain,
                  double clamp) {
    ctx->saved_data["dim"] = dim;
    ctx->saved_data["act"] = act;
    ctx->saved_data["p"] = std::vector<double>{alpha, gain, clamp};
  }
  static Saved get(AutogradContext* ctx) {
    const auto p = ctx->saved_data["p"].toDoubleVector();
    return {ctx->saved_data["dim"].toInt(), ctx->saved_data["act"].toStringRef(), p[0], p[1], p[2]};
  }
};

// d(the backward's factor)/d(ref): what multiplies grad * gg in the ref-gradient of the backward.
at::Tensor second_factor(Ref kind, Act a, const at::Tensor& ref, const at::Tensor& b, int64_t dim, double alpha,
                         double gain, double clamp) {
  if (kind == Ref::Y) {
    if (gain == 0) return at::zeros_like(ref);
    const at::Tensor z = ref / gain;
    at::Tensor f = a == Act::Tanh ? z * -2 : a == Act::Sigmoid ? 1 - z * 2 : (z <= 0).to(ref.scalar_type());
    if (clamp >= 0) f = f * (ref.abs() < clamp);
    return f;
  }
  const at::Tensor r = b.defined() ? ref + b.reshape(channel_shape(ref.dim(), dim)) : ref;
  at::Tensor f, act_r;
  if (a == Act::Softplus) {
    const at::Tensor s = at::sigmoid(r);
    f = s * (1 - s);
    if (clamp >= 0) act_r = at::softplus(r);
  } else if (a == Act::Swish) {
    const at::Tensor s = at::sigmoid(r);
    f = s * (1 - s) * (2 + r * (1 - s * 2));
    if (clamp >= 0) act_r = r * s;
  } else {  // gelu (erf form)
    const at::Tensor r2 = r * r;
    f = at::exp(r2 * -0.5) * (1.0 / std::sqrt(2 * M_PI)) * (2 - r2);
    if (clamp >= 0) act_r = r * 0.5 * (1 + at::erf(r * M_SQRT1_2));
  }
  f = f * gain;
  if (clamp >= 0) f = f * ((act_r * gain).abs() <= clamp);
  return f;
}

class BackwardFn : public torch::autograd::Function<BackwardFn> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& grad, const at::Tensor& ref,
                               const c10::optional<at::Tensor>& b, int64_t dim, std::string act, double alpha,
                               double gain, double clamp, bool bias_grad) {
    at::AutoDispatchBelowADInplaceOrView below;
    auto [gx, gb] = call_backward(grad, ref, b, dim, act, alpha, gain, clamp, bias_grad);
    const Ref kind = ref_of(parse_act(act), clamp >= 0);
    const bool second = kind == Ref::X || kind == Ref::Y;
    ctx->save_for_backward({second ? grad : at::Tensor(), kind != Ref::None ? ref : at::Tensor(),
                            kind == Ref::X && b.has_value() ? *b : at::Tensor()});
    Saved::put(ctx, dim, act, alpha, gain, clamp);
    ctx->saved_data["bias_grad"] = bias_grad;
    ctx->saved_data["has_b"] = present(b);
    if (!bias_grad) ctx->mark_non_differentiable({gb});
    return {gx, gb};
  }
  static variable_list backward(AutogradContext* ctx, variable_list gg) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &grad = saved[0], &ref = saved[1], &b = saved[2];
    const Saved s = Saved::get(ctx);
    const Act a = parse_act(s.act);
    const Ref kind = ref_of(a, s.clamp >= 0);
    // grad_b = grad_x summed over all but `dim`, so its gradient flows back broadcast into grad_x's.
    at::Tensor g = gg[0];
    if (ctx->saved_data["bias_grad"].toBool() && gg[1].defined() && gg[1].sym_numel() != 0) {
      const at::Tensor bg = gg[1].reshape(channel_shape(g.dim(), wrapped(s.dim, g.dim())));
      g = g + bg;
    }
    at::Tensor d_grad, d_ref, d_b;
    if (ctx->needs_input_grad(0)) {
      d_grad = std::get<0>(call_backward(g, ref.defined() ? ref : g, opt(b), s.dim, s.act, s.alpha, s.gain,
                                         s.clamp, false));
    }
    // needs_input_grad counts tensor arguments only: an absent optional b has no index.
    const bool has_b = ctx->saved_data["has_b"].toBool();
    const bool need_ref = ctx->needs_input_grad(1), need_b = has_b && ctx->needs_input_grad(2);
    if ((kind == Ref::X || kind == Ref::Y) && (need_ref || need_b)) {
      const int64_t d = wrapped(s.dim, ref.dim());
      const at::Tensor t = g * grad * second_factor(kind, a, ref, b, d, s.alpha, s.gain, s.clamp);
      if (need_ref) d_ref = t;
      if (kind == Ref::X && b.defined() && need_b) {
        std::vector<int64_t> dims;
        for (int64_t i = 0; i < t.dim(); i++)
          if (i != d) dims.push_back(i);
        d_b = dims.empty() ? t : t.sum(dims);
      }
    }
    return {d_grad, d_ref, d_b, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

class ForwardFn : public torch::autograd::Function<ForwardFn> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const c10::optional<at::Tensor>& b,
                               int64_t dim, std::string act, double alpha, double gain, double clamp) {
    at::AutoDispatchBelowADInplaceOrView below;
    static auto op = find_op<ForwardSig>("fastgan::bias_act");
    auto [y, mask] = op.call(x, b, dim, act, alpha, gain, clamp);
    const Ref kind = ref_of(parse_act(act), clamp >= 0);
    const at::Tensor ref = kind == Ref::Mask ? mask : kind == Ref::Y ? y : kind == Ref::X ? x : at::Tensor();
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({ref, kind == Ref::X && b.has_value() ? *b : at::Tensor()});
    Saved::put(ctx, dim, act, alpha, gain, clamp);
    ctx->saved_data["has_b"] = present(b);
    ctx->mark_non_differentiable({mask});
    return {y, mask};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list out(7);
    if (!grads[0].defined()) return out;
    const auto saved = ctx->get_saved_variables();
    const Saved s = Saved::get(ctx);
    const bool need_b = ctx->saved_data["has_b"].toBool() && ctx->needs_input_grad(1);  // b absent: no index
    auto [gx, gb] = call_backward(grads[0], saved[0].defined() ? saved[0] : grads[0], opt(saved[1]), s.dim, s.act,
                                  s.alpha, s.gain, s.clamp, need_b);
    out[0] = gx;
    if (need_b) out[1] = gb;
    return out;
  }
};

std::tuple<at::Tensor, at::Tensor> bias_act_autograd(const at::Tensor& x, const c10::optional<at::Tensor>& b,
                                                     int64_t dim, c10::string_view act, double alpha, double gain,
                                                     double clamp) {
  auto o = ForwardFn::apply(x, b, dim, std::string(act), alpha, gain, clamp);
  return {o[0], o[1]};
}

std::tuple<at::Tensor, at::Tensor> bias_act_backward_autograd(const at::Tensor& grad, const at::Tensor& ref,
                                                              const c10::optional<at::Tensor>& b, int64_t dim,
                                                              c10::string_view act, double alpha, double gain,
                                                              double clamp, bool bias_grad) {
  auto o = BackwardFn::apply(grad, ref, b, dim, std::string(act), alpha, gain, clamp, bias_grad);
  return {o[0], o[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, Autograd, m) {
  m.impl("bias_act", &bias_act_autograd);
  m.impl("bias_act_backward", &bias_act_backward_autograd);
}

TORCH_LIBRARY_IMPL(fastgan, AutocastCPU, m) { m.impl("bias_act", &bias_act_autocast); }
TORCH_LIBRARY_IMPL(fastgan, AutocastCUDA, m) { m.impl("bias_act", &bias_act_autocast); }

TORCH_LIBRARY_IMPL(fastgan, CPU, m) {
  m.impl("bias_act", &forward_op<CpuKernels>);
  m.impl("bias_act_backward", &backward_op<CpuKernels>);
  m.impl("bias_act_", &inplace_op<CpuKernels>);
}

}  // namespace bias_act
}  // namespace fastgan
