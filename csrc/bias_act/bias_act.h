// bias_act: y = clamp(act(x + b) * gain, -clamp, clamp), the math written once for CPU and CUDA.
//
// Every function is a template over V, the value type: float or double on both devices, and
// at::vec::Vectorized<float|double> on the CPU. fp16/bf16 tensors compute in float.
//
// What the backward reads ("ref") depends on the activation, so that relu/lrelu never keep x:
//   Mask  relu, lrelu, clamped linear: one uint8 per element: 0 clamped, 1 slope 1, 2 slope alpha
//   Y     tanh, sigmoid, elu, selu: the output y (the derivative is a function of it)
//   X     softplus, swish, gelu: the input x (+ b recomputed)
//   None  linear without clamp: dx = dy * gain
#pragma once
#include <cmath>
#include <string>

#include "common/checks.h"
#include "common/dispatch.h"
#include "common/layout.h"
#include "common/vmath.h"

namespace fastgan {
namespace bias_act {

enum class Act : int { Linear, Relu, Lrelu, Tanh, Sigmoid, Elu, Selu, Softplus, Swish, Gelu };
enum class Ref : int { None, Mask, Y, X };

constexpr double kSeluLambda = 1.0507009873554804934193349852946;
constexpr double kSeluAlpha = 1.6732632423543772848170429916717;

inline Act parse_act(const std::string& s) {
  if (s == "linear") return Act::Linear;
  if (s == "relu") return Act::Relu;
  if (s == "lrelu") return Act::Lrelu;
  if (s == "tanh") return Act::Tanh;
  if (s == "sigmoid") return Act::Sigmoid;
  if (s == "elu") return Act::Elu;
  if (s == "selu") return Act::Selu;
  if (s == "softplus") return Act::Softplus;
  if (s == "swish" || s == "silu") return Act::Swish;
  if (s == "gelu") return Act::Gelu;
  FASTGAN_CHECK_ARG(false, "act", "unknown activation '", s,
                    "'; expected one of linear, relu, lrelu, tanh, sigmoid, elu, selu, softplus, "
                    "swish, gelu");
  return Act::Linear;
}

inline Ref ref_of(Act a, bool clamped) {
  switch (a) {
    case Act::Linear: return clamped ? Ref::Mask : Ref::None;
    case Act::Relu:
    case Act::Lrelu: return Ref::Mask;
    case Act::Tanh:
    case Act::Sigmoid:
    case Act::Elu:
    case Act::Selu: return Ref::Y;
    default: return Ref::X;
  }
}

// Calls body with a constexpr `kAct` for the runtime activation `act`.
#define FASTGAN_DISPATCH_ACT(act, ...)                                                        \
  [&] {                                                                                       \
    using fastgan::bias_act::Act;                                                             \
    switch (act) {                                                                            \
      case Act::Linear: { constexpr Act kAct = Act::Linear; return __VA_ARGS__(); }           \
      case Act::Relu: { constexpr Act kAct = Act::Relu; return __VA_ARGS__(); }               \
      case Act::Lrelu: { constexpr Act kAct = Act::Lrelu; return __VA_ARGS__(); }             \
      case Act::Tanh: { constexpr Act kAct = Act::Tanh; return __VA_ARGS__(); }               \
      case Act::Sigmoid: { constexpr Act kAct = Act::Sigmoid; return __VA_ARGS__(); }         \
      case Act::Elu: { constexpr Act kAct = Act::Elu; return __VA_ARGS__(); }                 \
      case Act::Selu: { constexpr Act kAct = Act::Selu; return __VA_ARGS__(); }               \
      case Act::Softplus: { constexpr Act kAct = Act::Softplus; return __VA_ARGS__(); }       \
      case Act::Swish: { constexpr Act kAct = Act::Swish; return __VA_ARGS__(); }             \
      default: { constexpr Act kAct = Act::Gelu; return __VA_ARGS__(); }                      \
    }                                                                                         \
  }()

// Elementary functions (exp_, tanh_, sel, ...) for scalars and Vectorized: common/vmath.h.
using namespace fastgan::vmath;

// ---- activations ---------------------------------------------------------------------------
template <class V> FASTGAN_HD V sigmoid_(V x) { return V(1) / (V(1) + exp_(V(0) - x)); }

// act(x). Comparisons are written so that NaN propagates, as in PyTorch.
template <Act A, class V> FASTGAN_HD V act_f(V x, V alpha) {
  if constexpr (A == Act::Linear) return x;
  else if constexpr (A == Act::Relu) return sel(x < V(0), V(0), x);
  else if constexpr (A == Act::Lrelu) return sel(x < V(0), x * alpha, x);
  else if constexpr (A == Act::Tanh) return tanh_(x);
  else if constexpr (A == Act::Sigmoid) return sigmoid_(x);
  else if constexpr (A == Act::Elu) return sel(x > V(0), x, alpha * expm1_(x));
  else if constexpr (A == Act::Selu)
    return sel(x > V(0), V(kSeluLambda) * x, V(kSeluLambda * kSeluAlpha) * expm1_(x));
  else if constexpr (A == Act::Softplus)  // log(1 + e^x) = max(x, 0) + log1p(e^-|x|)
    return sel(x > V(0), x, V(0)) + log1p_unit(exp_(V(0) - abs_(x)));
  else if constexpr (A == Act::Swish) return x * sigmoid_(x);
  else return V(0.5) * x * (V(1) + erf_(x * V(0.70710678118654752440)));  // gelu, erf form
}

// d act / dx, from the reference value: z = y / gain for Ref::Y acts, x + b for Ref::X acts.
template <Act A, class V> FASTGAN_HD V act_d(V r, V alpha) {
  if constexpr (A == Act::Tanh) return V(1) - r * r;
  else if constexpr (A == Act::Sigmoid) return r * (V(1) - r);
  else if constexpr (A == Act::Elu) return sel(r > V(0), V(1), r + alpha);
  else if constexpr (A == Act::Selu)
    return sel(r > V(0), V(kSeluLambda), r + V(kSeluLambda * kSeluAlpha));
  else if constexpr (A == Act::Softplus) return sigmoid_(r);
  else if constexpr (A == Act::Swish) {
    V s = sigmoid_(r);
    return s + r * s * (V(1) - s);
  } else if constexpr (A == Act::Gelu) {
    V cdf = V(0.5) * (V(1) + erf_(r * V(0.70710678118654752440)));
    V pdf = exp_(V(-0.5) * r * r) * V(0.39894228040143267794);
    return cdf + r * pdf;
  } else return V(1);  // linear; relu/lrelu use the mask
}

template <class V> FASTGAN_HD V clamp_(V v, V c) { return sel(v < V(0) - c, V(0) - c, sel(v > c, c, v)); }

// Mask class of one element (scalar): 0 clamped, 1 slope one, 2 slope alpha. clamp < 0: none.
template <Act A, class T> FASTGAN_HD uint8_t mask_class(T pre, T out_unclamped, T clamp) {
  if (clamp >= T(0) && abs_(out_unclamped) > clamp) return 0;
  if constexpr (A == Act::Linear) return 1;
  else return pre > T(0) ? 1 : 2;
}

// Factor that multiplies dy: gain * act'(.) * [not clamped]; V is a scalar or a Vectorized.
//   Mask: r is the class (0, 1, 2).  Y: r is y.  X: r is x + b.  None: r unused.
template <Act A, Ref R, class V>
FASTGAN_HD V grad_factor(V r, V alpha, V gain, V clamp, bool has_clamp, bool gain_zero) {
  if constexpr (R == Ref::None) {
    return gain;
  } else if constexpr (R == Ref::Mask) {
    return sel(r == V(1), gain, sel(r == V(2), alpha * gain, V(0)));
  } else if constexpr (R == Ref::Y) {
    if (gain_zero) return V(0);
    V f = gain * act_d<A>(r / gain, alpha);
    return has_clamp ? sel(abs_(r) >= clamp, V(0), f) : f;
  } else {
    V f = gain * act_d<A>(r, alpha);
    return has_clamp ? sel(abs_(act_f<A>(r, alpha) * gain) > clamp, V(0), f) : f;
  }
}

// ---- host-side argument handling shared by the CPU and CUDA entry points --------------------
struct Params {
  Act act;
  Ref ref;
  double alpha, gain, clamp;  // clamp < 0: none
  int64_t dim;                // wrapped
};

// needs_dim: a bias is added or reduced, so `dim` must name a dimension of `like`.
inline Params make_params(const at::Tensor& like, int64_t dim, const std::string& act,
                          double alpha, double gain, double clamp, bool needs_dim) {
  Params p;
  p.act = parse_act(act);
  if (needs_dim) {
    FASTGAN_CHECK_ARG(like.dim() > 0, "b", "a bias needs x to have at least one dimension");
    p.dim = wrap_dim(dim, like.dim(), "dim");
  } else {
    p.dim = -1;
  }
  FASTGAN_CHECK_ARG(std::isfinite(gain), "gain", "expected a finite number, got ", gain);
  FASTGAN_CHECK_ARG(!std::isnan(clamp), "clamp", "expected a number, got nan");
  p.alpha = p.act == Act::Relu ? 0.0 : alpha;
  p.gain = gain;
  p.clamp = clamp;
  p.ref = ref_of(p.act, clamp >= 0);
  return p;
}

inline void check_bias(const c10::optional<at::Tensor>& b, const at::Tensor& x, const Params& p) {
  if (!b.has_value()) return;
  check_same_device(*b, x, "b", "x");
  check_same_dtype(*b, x, "b", "x");
  FASTGAN_CHECK_ARG(b->dim() == 1 && b->size(0) == x.size(p.dim), "b",
                    "expected a 1-D tensor of length ", x.size(p.dim), " (x.shape[", p.dim,
                    "]), got shape ", b->sizes());
}

}  // namespace bias_act
}  // namespace fastgan

namespace fastgan {
namespace bias_act {

// Device-independent entry points. Kernels::forward / Kernels::backward run one device's loops;
// everything else (checks, layout, allocation) is the same on every device.
//   forward(x, b_acc or undefined, y, mask or undefined, layout, params)
//   backward(grad, ref or undefined, b_acc or undefined, gx, gb_acc or undefined, layout, params)
template <class Kernels>
std::tuple<at::Tensor, at::Tensor> forward_impl(const at::Tensor& x, const c10::optional<at::Tensor>& b,
                                                int64_t dim, const std::string& act, double alpha,
                                                double gain, double clamp, bool inplace) {
  check_floating(x, "x");
  Params p = make_params(x, dim, act, alpha, gain, clamp, b.has_value());
  check_bias(b, x, p);
  at::Tensor xd = make_dense(x);
  at::Tensor y = inplace && xd.is_same(x) ? x : at::empty_like(x);
  at::Tensor mask = p.ref == Ref::Mask ? at::empty_like(x, x.options().dtype(at::kByte))
                                       : at::empty({0}, x.options().dtype(at::kByte));
  if (x.numel() > 0) {
    at::Tensor bacc;
    if (b.has_value()) bacc = b->to(at::toOpMathType(x.scalar_type())).contiguous();
    Kernels::forward(xd, bacc, y, mask, channel_layout(xd, p.dim), p);
  }
  if (inplace && !y.is_same(x)) x.copy_(y);
  return {inplace ? x : y, mask};
}

template <class Kernels>
std::tuple<at::Tensor, at::Tensor> backward_impl(const at::Tensor& grad, const at::Tensor& ref,
                                                 const c10::optional<at::Tensor>& b, int64_t dim,
                                                 const std::string& act, double alpha, double gain,
                                                 double clamp, bool bias_grad) {
  check_floating(grad, "grad");
  const bool uses_b = b.has_value() && ref_of(parse_act(act), clamp >= 0) == Ref::X;
  Params p = make_params(grad, dim, act, alpha, gain, clamp, bias_grad || uses_b);
  check_same_device(ref, grad, "ref", "grad");
  at::Tensor refd, g;
  if (p.ref == Ref::None) {
    g = make_dense(grad);
  } else {
    FASTGAN_CHECK_ARG(ref.sizes() == grad.sizes(), "ref", "expected shape ", grad.sizes(),
                      " (the shape of 'grad'), got ", ref.sizes());
    if (p.ref == Ref::Mask) {
      FASTGAN_CHECK_ARG(ref.scalar_type() == at::kByte, "ref", "expected the uint8 mask that ",
                        "bias_act returned for act='", act, "', got dtype ", ref.scalar_type());
    } else {
      check_same_dtype(ref, grad, "ref", "grad");
    }
    refd = make_dense(ref);
    g = match_strides(grad, refd);
  }
  if (uses_b) check_bias(b, grad, p);
  at::Tensor gx = at::empty_like(p.ref == Ref::None ? grad : ref, grad.options());
  const at::ScalarType acc = at::toOpMathType(grad.scalar_type());
  at::Tensor gb_acc;
  if (bias_grad) gb_acc = at::zeros({grad.size(p.dim)}, grad.options().dtype(acc));
  if (grad.numel() > 0) {
    at::Tensor bacc;
    if (uses_b) bacc = b->to(acc).contiguous();
    Kernels::backward(g, refd, bacc, gx, gb_acc, channel_layout(g, p.dim), p);
  }
  at::Tensor gb = bias_grad ? gb_acc.to(grad.scalar_type()) : at::empty({0}, grad.options());
  return {gx, gb};
}

template <class Kernels>
at::Tensor inplace_impl(at::Tensor& x, const c10::optional<at::Tensor>& b, int64_t dim,
                        const std::string& act, double alpha, double gain, double clamp) {
  Act a = parse_act(act);
  FASTGAN_CHECK_ARG(a == Act::Linear || a == Act::Relu || a == Act::Lrelu, "act",
                    "in-place bias_act supports linear, relu and lrelu (their backward needs only "
                    "a mask), got '", act, "'");
  return std::get<1>(forward_impl<Kernels>(x, b, dim, act, alpha, gain, clamp, /*inplace=*/true));
}

// The dispatcher's signatures, one instantiation per device (registered with TORCH_LIBRARY_IMPL).
template <class Kernels>
std::tuple<at::Tensor, at::Tensor> forward_op(const at::Tensor& x, const c10::optional<at::Tensor>& b,
                                              int64_t dim, c10::string_view act, double alpha,
                                              double gain, double clamp) {
  return forward_impl<Kernels>(x, b, dim, std::string(act), alpha, gain, clamp, false);
}

template <class Kernels>
std::tuple<at::Tensor, at::Tensor> backward_op(const at::Tensor& grad, const at::Tensor& ref,
                                               const c10::optional<at::Tensor>& b, int64_t dim,
                                               c10::string_view act, double alpha, double gain,
                                               double clamp, bool bias_grad) {
  return backward_impl<Kernels>(grad, ref, b, dim, std::string(act), alpha, gain, clamp, bias_grad);
}

template <class Kernels>
at::Tensor inplace_op(at::Tensor& x, const c10::optional<at::Tensor>& b, int64_t dim,
                      c10::string_view act, double alpha, double gain, double clamp) {
  return inplace_impl<Kernels>(x, b, dim, std::string(act), alpha, gain, clamp);
}

}  // namespace bias_act
}  // namespace fastgan
