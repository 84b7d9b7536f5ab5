// GAN losses: the math written once for CPU and CUDA.
//
// Every loss is a sum over two "sides" (batches of logits): the D loss has side 0 = real logits and
// side 1 = fake logits; the G loss has side 0 = fake logits and side 1 = real logits (used by rals
// only, else empty). Each side adds scale * sum_i l(x_i), scale = 1/N (mean) or 1 (sum), where the
// per-logit term l has one of four forms, chosen by the kind:
//
//   Softplus  l = a * softplus(z) + b * x,  z = s * x + tau * mean(other side)
//   Hinge     l = relu(1 + s * x)
//   Linear    l = b * x
//   Square    l = (x - b)^2 / 2
//
// tau != 0 only for rals ("coupled"): the means of the other side enter the terms, so the kernels
// first reduce the means, then the terms, and, because d loss / d x_k then also depends on the
// sums of the other side's derivatives, finally add one constant per side to the gradient.
// rpgan ("paired", the relativistic pairing loss of RpGAN / R3GAN) pairs the sides one to one: one
// Softplus term per pair i with x = x0_i - x1_i (side 0's coefficients), scale over the n pairs,
// and d loss / d x1_i = -d loss / d x0_i; both sides have the same shape.
// The forward computes the loss and d loss / d logits (in the accumulate type) in one pass; the
// backward only scales the saved gradient by the incoming one.
#pragma once
#include <array>
#include <cmath>
#include <string>

#include "common/checks.h"
#include "common/dispatch.h"
#include "common/vmath.h"

namespace fastgan {
namespace gan_loss {

enum class Form : int { Softplus, Hinge, Linear, Square };
enum class Kind : int { NS, Minimax, Hinge, Wgan, Lsgan, Rals, Rpgan };

inline Kind parse_kind(const std::string& k) {
  if (k == "ns") return Kind::NS;
  if (k == "minimax") return Kind::Minimax;
  if (k == "hinge") return Kind::Hinge;
  if (k == "wgan") return Kind::Wgan;
  if (k == "lsgan") return Kind::Lsgan;
  if (k == "rals") return Kind::Rals;
  if (k == "rpgan") return Kind::Rpgan;
  FASTGAN_CHECK_ARG(false, "kind", "unknown loss kind '", k,
                    "'; expected one of ns, minimax, hinge, wgan, lsgan, rals, rpgan");
  return Kind::NS;
}

// true: mean, false: sum
inline bool parse_reduction(const std::string& r) {
  FASTGAN_CHECK_ARG(r == "mean" || r == "sum", "reduction", "expected 'mean' or 'sum', got '", r, "'");
  return r == "mean";
}

struct Coef {
  double a = 0, s = 1, b = 0, tau = 0;
};

struct Spec {
  Form form;
  bool coupled = false;
  bool paired = false;
  Coef side[2];
};

// D loss: side 0 real, side 1 fake.
inline Spec d_spec(Kind k, double real_label, double fake_label) {
  Spec p;
  switch (k) {
    case Kind::NS:
    case Kind::Minimax:  // BCE(x, y) = softplus(x) - y x
      p.form = Form::Softplus;
      p.side[0] = {1, 1, -real_label, 0};
      p.side[1] = {1, 1, -fake_label, 0};
      break;
    case Kind::Hinge:  // relu(1 - r) + relu(1 + f)
      p.form = Form::Hinge;
      p.side[0].s = -1;
      p.side[1].s = 1;
      break;
    case Kind::Wgan:  // f - r
      p.form = Form::Linear;
      p.side[0].b = -1;
      p.side[1].b = 1;
      break;
    case Kind::Lsgan:  // (r - 1)^2 / 2 + f^2 / 2
      p.form = Form::Square;
      p.side[0].b = 1;
      p.side[1].b = 0;
      break;
    case Kind::Rals:  // softplus(mean(f) - r) + softplus(f - mean(r))
      p.form = Form::Softplus;
      p.coupled = true;
      p.side[0] = {1, -1, 0, 1};
      p.side[1] = {1, 1, 0, -1};
      break;
    case Kind::Rpgan:  // softplus(-(r_i - f_i)) = softplus(f_i - r_i)
      p.form = Form::Softplus;
      p.paired = true;
      p.side[0] = {1, -1, 0, 0};
      break;
  }
  return p;
}

// G loss: side 0 fake, side 1 real (rals only).
inline Spec g_spec(Kind k) {
  Spec p;
  switch (k) {
    case Kind::NS:  // softplus(-f)
      p.form = Form::Softplus;
      p.side[0] = {1, -1, 0, 0};
      break;
    case Kind::Minimax:  // -softplus(f) = log(1 - sigmoid(f))
      p.form = Form::Softplus;
      p.side[0] = {-1, 1, 0, 0};
      break;
    case Kind::Hinge:
    case Kind::Wgan:  // -f
      p.form = Form::Linear;
      p.side[0].b = -1;
      break;
    case Kind::Lsgan:  // (f - 1)^2 / 2
      p.form = Form::Square;
      p.side[0].b = 1;
      break;
    case Kind::Rals:  // the D loss with real and fake swapped
    case Kind::Rpgan:
      p = d_spec(k, 1, 0);
      break;
  }
  return p;
}

// ---- the per-logit math (V: float/double, or at::vec::Vectorized on the CPU) ------------------
// Stable softplus(z) = max(z, 0) + log1p(e^-|z|) and sigmoid(z) from the same e^-|z|; exact at
// |z| = 100 in every dtype (e^-100 is a float denormal or zero, both harmless here).
template <class V> FASTGAN_HD void softplus_sigmoid(V z, V& sp, V& sig) {
  using namespace fastgan::vmath;
  const V e = exp_(V(0) - abs_(z));
  const V r = V(1) / (V(1) + e);
  sig = sel(z >= V(0), r, e * r);
  sp = sel(z > V(0), z, V(0)) + log1p_unit(e);
}

template <class V> FASTGAN_HD V sigmoid_of(V x) {
  V sp, sig;
  softplus_sigmoid(x, sp, sig);
  return sig;
}

// l: the term; d: dl/dx; dz: dl/dz (Softplus form: a * sigmoid(z); needed by the coupled kinds).
// Comparisons are written so that NaN logits give NaN losses.
template <Form F, class V>
FASTGAN_HD void term(V x, V a, V s, V b, V t, V& l, V& d, V& dz) {
  using namespace fastgan::vmath;
  if constexpr (F == Form::Softplus) {
    V sp, sig;
    softplus_sigmoid(s * x + t, sp, sig);
    dz = a * sig;
    l = a * sp + b * x;
    d = s * dz + b;
  } else if constexpr (F == Form::Hinge) {
    const V u = V(1) + s * x;
    l = sel(u < V(0), V(0), u);
    d = sel(u > V(0), s, V(0));
    dz = V(0);
  } else if constexpr (F == Form::Linear) {
    l = b * x;
    d = b;
    dz = V(0);
  } else {
    const V u = x - b;
    l = V(0.5) * u * u;
    d = u;
    dz = V(0);
  }
}

#define FASTGAN_DISPATCH_FORM(form, ...)                                              \
  [&] {                                                                               \
    using fastgan::gan_loss::Form;                                                    \
    switch (form) {                                                                   \
      case Form::Softplus: { constexpr Form kForm = Form::Softplus; return __VA_ARGS__(); } \
      case Form::Hinge: { constexpr Form kForm = Form::Hinge; return __VA_ARGS__(); }       \
      case Form::Linear: { constexpr Form kForm = Form::Linear; return __VA_ARGS__(); }     \
      default: { constexpr Form kForm = Form::Square; return __VA_ARGS__(); }               \
    }                                                                                 \
  }()

// ---- host side shared by the CPU and CUDA entry points --------------------------------------
// What a device's Kernels::run receives. x[i] are contiguous; x[1] has n[1] == 0 for the G loss
// of the uncoupled kinds. g[i] (accumulate dtype, contiguous, x[i]'s shape) receive dloss/dx;
// loss is a 0-dim tensor and stats either (2,) [mean sigmoid(x0), mean sigmoid(x1)] or empty.
struct Problem {
  Form form;
  bool coupled = false;
  bool paired = false;  // then n[1] == n[0], and scale[1] is unused
  bool stats = false;
  at::Tensor x[2], g[2];
  int64_t n[2] = {0, 0};
  Coef coef[2];
  double scale[2] = {1, 1};
  at::Tensor loss, stats_out;
};

inline void check_logits(const at::Tensor& t, const char* arg) {
  check_floating(t, arg);
  FASTGAN_CHECK_ARG(t.numel() > 0, arg, "expected a non-empty batch of logits, got shape ", t.sizes());
}

inline at::Tensor alloc_grad(const at::Tensor& x) {
  return at::empty(x.sizes(), x.options().dtype(at::toOpMathType(x.scalar_type())));
}

inline Problem make_problem(const Spec& spec, bool mean, const at::Tensor& x0,
                            const c10::optional<at::Tensor>& x1) {
  Problem p;
  p.form = spec.form;
  p.coupled = spec.coupled;
  p.paired = spec.paired;
  p.x[0] = x0.contiguous();
  p.n[0] = x0.numel();
  p.g[0] = alloc_grad(x0);
  if (x1.has_value()) {
    p.x[1] = x1->contiguous();
    p.n[1] = x1->numel();
    p.g[1] = alloc_grad(*x1);
  } else {
    p.x[1] = x0.new_empty({0});
    p.n[1] = 0;
    p.g[1] = at::empty({0}, p.g[0].options());
  }
  for (int i = 0; i < 2; i++) {
    p.coef[i] = spec.side[i];
    p.scale[i] = mean && p.n[i] > 0 ? 1.0 / double(p.n[i]) : 1.0;
  }
  p.loss = at::empty({}, p.g[0].options());
  return p;
}

// rpgan's pairs: the same shape on both sides.
inline void check_paired(const at::Tensor& t, const at::Tensor& other, const char* arg, const char* other_arg) {
  FASTGAN_CHECK_ARG(t.sizes() == other.sizes(), arg, "the rpgan loss pairs real and fake logits one to one, "
                    "so '", arg, "' must have the shape of '", other_arg, "': got ", t.sizes(), " and ",
                    other.sizes());
}

// d_loss op: returns (loss, stats, grad_real, grad_fake).
template <class Kernels>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> d_loss_impl(
    const at::Tensor& real, const at::Tensor& fake, const std::string& kind,
    const std::string& reduction, double real_label, double fake_label, bool stats) {
  const Kind k = parse_kind(kind);
  const bool mean = parse_reduction(reduction);
  check_logits(real, "real");
  check_logits(fake, "fake");
  check_same_device(fake, real, "fake", "real");
  check_same_dtype(fake, real, "fake", "real");
  FASTGAN_CHECK_ARG(std::isfinite(real_label), "real_label", "expected a finite number, got ", real_label);
  FASTGAN_CHECK_ARG(std::isfinite(fake_label), "fake_label", "expected a finite number, got ", fake_label);
  if (k == Kind::Rpgan) check_paired(fake, real, "fake", "real");
  Problem p = make_problem(d_spec(k, real_label, fake_label), mean, real, fake);
  p.stats = stats;
  p.stats_out = at::empty({stats ? 2 : 0}, p.loss.options());
  Kernels::run(p);
  return {p.loss, p.stats_out, p.g[0], p.g[1]};
}

// g_loss op: returns (loss, grad_fake, grad_real); grad_real is empty unless kind is rals or rpgan.
template <class Kernels>
std::tuple<at::Tensor, at::Tensor, at::Tensor> g_loss_impl(const at::Tensor& fake,
                                                           const c10::optional<at::Tensor>& real,
                                                           const std::string& kind,
                                                           const std::string& reduction) {
  const Kind k = parse_kind(kind);
  const bool mean = parse_reduction(reduction);
  check_logits(fake, "fake");
  c10::optional<at::Tensor> other;
  if (k == Kind::Rals || k == Kind::Rpgan) {
    FASTGAN_CHECK_ARG(real.has_value(), "real", "the ", kind, " generator loss needs the real logits");
    check_logits(*real, "real");
    check_same_device(*real, fake, "real", "fake");
    check_same_dtype(*real, fake, "real", "fake");
    if (k == Kind::Rpgan) check_paired(*real, fake, "real", "fake");
    other = real;
  }
  Problem p = make_problem(g_spec(k), mean, fake, other);
  p.stats_out = at::empty({0}, p.loss.options());
  Kernels::run(p);
  return {p.loss, p.g[0], p.g[1]};
}

// Backward: (grad * g0, grad * g1) in `dtype`. grad holds one element.
template <class Kernels>
std::tuple<at::Tensor, at::Tensor> loss_backward_impl(const at::Tensor& grad, const at::Tensor& g0,
                                                      const at::Tensor& g1, at::ScalarType dtype) {
  check_floating(grad, "grad");
  check_floating(g0, "g0");
  check_floating(g1, "g1");
  FASTGAN_CHECK_ARG(grad.numel() == 1, "grad", "expected the gradient of a scalar loss (one element), "
                    "got shape ", grad.sizes());
  FASTGAN_CHECK_ARG(at::isFloatingType(dtype), "dtype", "expected a floating-point dtype, got ", dtype);
  check_same_device(g0, grad, "g0", "grad");
  check_same_device(g1, grad, "g1", "grad");
  check_same_dtype(g1, g0, "g1", "g0");
  const at::Tensor gd0 = g0.contiguous(), gd1 = g1.contiguous();
  at::Tensor out0 = at::empty(g0.sizes(), g0.options().dtype(dtype));
  at::Tensor out1 = at::empty(g1.sizes(), g1.options().dtype(dtype));
  if (gd0.numel() + gd1.numel() > 0) {
    const at::Tensor gs = grad.to(gd0.scalar_type()).reshape({});
    Kernels::backward(gs, gd0, gd1, out0, out1);
  }
  return {out0, out1};
}

}  // namespace gan_loss
}  // namespace fastgan
