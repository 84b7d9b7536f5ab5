// GAN losses on the CPU: at::vec over fixed chunks of each side, per-chunk partial sums in double
// added in chunk order, so the result does not depend on the number of threads.
#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <torch/library.h>

#include <vector>

#include "common/autograd.h"
#include "gan_loss/gan_loss.h"

namespace fastgan {
namespace gan_loss {
namespace {

using vmath::Vec;
constexpr int64_t kChunk = 65536;  // elements per parallel task (batches up to this run on one thread)
constexpr int kFlush = 64;         // vector steps summed in the accumulate type before going to double

// Sums of one chunk: [0] terms, [1] sigmoid(x) (stats), [2] dl/dz (coupled kinds).
using Sums = std::array<double, 3>;

// Runs f(begin, end) -> Sums over fixed chunks of [0, n), in parallel, and adds the results in
// chunk order.
template <class F>
Sums chunked(int64_t n, F&& f) {
  const int64_t nchunks = (n + kChunk - 1) / kChunk;
  if (nchunks <= 1) return n > 0 ? f(int64_t(0), n) : Sums{0, 0, 0};
  std::vector<Sums> parts(static_cast<size_t>(nchunks));
  at::parallel_for(0, nchunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; c++) parts[size_t(c)] = f(c * kChunk, std::min(n, (c + 1) * kChunk));
  });
  Sums s{0, 0, 0};
  for (const Sums& p : parts)
    for (int k = 0; k < 3; k++) s[k] += p[k];
  return s;
}

template <typename scalar_t>
double sum_of(const at::Tensor& x) {
  using acc = acc_t<scalar_t>;
  using V = Vec<acc>;
  constexpr int K = V::size();
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  return chunked(x.numel(), [&](int64_t begin, int64_t end) {
    double total = 0;
    V v(0);
    int steps = 0;
    for (int64_t i = begin; i < end; i += K) {
      const int n = int(std::min<int64_t>(K, end - i));
      v = v + vmath::load_as<acc>(xp + i, n);  // missing lanes load as zero
      if (++steps == kFlush) {
        total += vmath::hsum(v);
        v = V(0);
        steps = 0;
      }
    }
    return Sums{total + vmath::hsum(v), 0, 0};
  })[0];
}

// One side: g = scale * dl/dx, and the sums of l, sigmoid(x) and dl/dz.
template <typename scalar_t, Form F, bool kStats>
Sums side_pass(const at::Tensor& x, at::Tensor& g, const Coef& c, double t, double scale) {
  using acc = acc_t<scalar_t>;
  using V = Vec<acc>;
  constexpr int K = V::size();
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  acc* gp = g.mutable_data_ptr<acc>();
  const V va{acc(c.a)}, vs{acc(c.s)}, vb{acc(c.b)}, vt{acc(t)}, vscale{acc(scale)};
  return chunked(x.numel(), [&](int64_t begin, int64_t end) {
    Sums tot{0, 0, 0};
    V sl(0), ss(0), sz(0);
    int steps = 0;
    auto flush = [&] {
      tot[0] += vmath::hsum(sl);
      if (kStats) tot[1] += vmath::hsum(ss);
      if (F == Form::Softplus) tot[2] += vmath::hsum(sz);
      sl = ss = sz = V(0);
      steps = 0;
    };
    for (int64_t i = begin; i < end; i += K) {
      const int n = int(std::min<int64_t>(K, end - i));
      const V xv = vmath::load_as<acc>(xp + i, n);
      V l, d, dz;
      term<F>(xv, va, vs, vb, vt, l, d, dz);
      vmath::store_as(d * vscale, gp + i, n);
      V sg = kStats ? sigmoid_of(xv) : V(0);
      if (n < K) {  // drop the padding lanes from the sums
        l = V::set(V(0), l, n);
        dz = V::set(V(0), dz, n);
        sg = V::set(V(0), sg, n);
      }
      sl = sl + l;
      if (kStats) ss = ss + sg;
      if (F == Form::Softplus) sz = sz + dz;
      if (++steps == kFlush) flush();
    }
    flush();
    return tot;
  });
}

// rpgan: one term per pair, x = x0_i - x1_i; g0 = scale * dl/dx, g1 = -g0; the sums of l and
// (kStats) of sigmoid(x0) and sigmoid(x1).
template <typename scalar_t, bool kStats>
Sums paired_pass(const at::Tensor& x0, const at::Tensor& x1, at::Tensor& g0, at::Tensor& g1, const Coef& c,
                 double scale) {
  using acc = acc_t<scalar_t>;
  using V = Vec<acc>;
  constexpr int K = V::size();
  const scalar_t* ap = x0.const_data_ptr<scalar_t>();
  const scalar_t* bp = x1.const_data_ptr<scalar_t>();
  acc* gap = g0.mutable_data_ptr<acc>();
  acc* gbp = g1.mutable_data_ptr<acc>();
  const V va{acc(c.a)}, vs{acc(c.s)}, vb{acc(c.b)}, vscale{acc(scale)};
  return chunked(x0.numel(), [&](int64_t begin, int64_t end) {
    Sums tot{0, 0, 0};
    V sl(0), s0(0), s1(0);
    int steps = 0;
    auto flush = [&] {
      tot[0] += vmath::hsum(sl);
      if (kStats) {
        tot[1] += vmath::hsum(s0);
        tot[2] += vmath::hsum(s1);
      }
      sl = s0 = s1 = V(0);
      steps = 0;
    };
    for (int64_t i = begin; i < end; i += K) {
      const int n = int(std::min<int64_t>(K, end - i));
      const V av = vmath::load_as<acc>(ap + i, n), bv = vmath::load_as<acc>(bp + i, n);
      V l, d, dz;
      term<Form::Softplus>(av - bv, va, vs, vb, V(0), l, d, dz);
      const V g = d * vscale;
      vmath::store_as(g, gap + i, n);
      vmath::store_as(V(0) - g, gbp + i, n);
      V sa = kStats ? sigmoid_of(av) : V(0), sb = kStats ? sigmoid_of(bv) : V(0);
      if (n < K) {  // drop the padding lanes from the sums
        l = V::set(V(0), l, n);
        sa = V::set(V(0), sa, n);
        sb = V::set(V(0), sb, n);
      }
      sl = sl + l;
      if (kStats) {
        s0 = s0 + sa;
        s1 = s1 + sb;
      }
      if (++steps == kFlush) flush();
    }
    flush();
    return tot;
  });
}

template <typename scalar_t>
void run_paired(Problem& p) {
  using acc = acc_t<scalar_t>;
  const Sums s = p.stats ? paired_pass<scalar_t, true>(p.x[0], p.x[1], p.g[0], p.g[1], p.coef[0], p.scale[0])
                         : paired_pass<scalar_t, false>(p.x[0], p.x[1], p.g[0], p.g[1], p.coef[0], p.scale[0]);
  *p.loss.mutable_data_ptr<acc>() = acc(p.scale[0] * s[0]);
  if (p.stats) {
    acc* st = p.stats_out.mutable_data_ptr<acc>();
    st[0] = acc(s[1] / double(p.n[0]));
    st[1] = acc(s[2] / double(p.n[1]));
  }
}

template <typename acc>
void add_constant(at::Tensor& g, double c) {
  if (c == 0 || g.numel() == 0) return;
  acc* gp = g.mutable_data_ptr<acc>();
  const acc v = acc(c);
  at::parallel_for(0, g.numel(), 1 << 16, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; i++) gp[i] += v;
  });
}

template <typename scalar_t, Form F>
void run_typed(Problem& p) {
  using acc = acc_t<scalar_t>;
  double mean[2] = {0, 0};
  if (p.coupled) {
    for (int i = 0; i < 2; i++) mean[i] = sum_of<scalar_t>(p.x[i]) / double(p.n[i]);
  }
  Sums s[2] = {{0, 0, 0}, {0, 0, 0}};
  for (int i = 0; i < 2; i++) {
    if (p.n[i] == 0) continue;
    const double t = p.coef[i].tau * mean[1 - i];
    s[i] = p.stats ? side_pass<scalar_t, F, true>(p.x[i], p.g[i], p.coef[i], t, p.scale[i])
                   : side_pass<scalar_t, F, false>(p.x[i], p.g[i], p.coef[i], t, p.scale[i]);
  }
  if (p.coupled) {
    // x_k of side i also moves every z of the other side j through mean(x_i):
    // d loss / d x_k += tau_j / n_i * scale_j * sum(dl/dz over side j).
    for (int i = 0; i < 2; i++) {
      const int j = 1 - i;
      add_constant<acc>(p.g[i], p.coef[j].tau / double(p.n[i]) * p.scale[j] * s[j][2]);
    }
  }
  *p.loss.mutable_data_ptr<acc>() = acc(p.scale[0] * s[0][0] + p.scale[1] * s[1][0]);
  if (p.stats) {
    acc* st = p.stats_out.mutable_data_ptr<acc>();
    st[0] = acc(s[0][1] / double(p.n[0]));
    st[1] = acc(s[1][1] / double(p.n[1]));
  }
}

struct CpuKernels {
  static void run(Problem& p) {
    FASTGAN_DISPATCH_FLOATING(p.x[0].scalar_type(), "gan_loss_cpu", [&] {
      if (p.paired) return run_paired<scalar_t>(p);
      FASTGAN_DISPATCH_FORM(p.form, [&] { run_typed<scalar_t, kForm>(p); });
    });
  }
  static void backward(const at::Tensor& grad, const at::Tensor& g0, const at::Tensor& g1,
                       at::Tensor& out0, at::Tensor& out1) {
    FASTGAN_DISPATCH_FLOATING(g0.scalar_type(), "gan_loss_backward_cpu_acc", [&] {
      using acc = scalar_t;
      const acc gv = *grad.const_data_ptr<acc>();
      FASTGAN_DISPATCH_FLOATING(out0.scalar_type(), "gan_loss_backward_cpu", [&] {
        const at::Tensor* src[2] = {&g0, &g1};
        at::Tensor* dst[2] = {&out0, &out1};
        for (int k = 0; k < 2; k++) {
          const acc* gp = src[k]->const_data_ptr<acc>();
          scalar_t* op = dst[k]->mutable_data_ptr<scalar_t>();
          at::parallel_for(0, src[k]->numel(), 1 << 16, [&](int64_t b, int64_t e) {
            for (int64_t i = b; i < e; i++) op[i] = scalar_t(gv * gp[i]);
          });
        }
      });
    });
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gan_d_loss_cpu(
    const at::Tensor& real, const at::Tensor& fake, c10::string_view kind, c10::string_view reduction,
    double real_label, double fake_label, bool stats) {
  return d_loss_impl<CpuKernels>(real, fake, std::string(kind), std::string(reduction), real_label,
                                 fake_label, stats);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gan_g_loss_cpu(const at::Tensor& fake,
                                                              const c10::optional<at::Tensor>& real,
                                                              c10::string_view kind,
                                                              c10::string_view reduction) {
  return g_loss_impl<CpuKernels>(fake, real, std::string(kind), std::string(reduction));
}

std::tuple<at::Tensor, at::Tensor> gan_loss_backward_cpu(const at::Tensor& grad, const at::Tensor& g0,
                                                         const at::Tensor& g1, at::ScalarType dtype) {
  return loss_backward_impl<CpuKernels>(grad, g0, g1, dtype);
}

// ---- autocast: the kernels already read fp16/bf16 logits and accumulate and return the loss in
// fp32, so nothing is cast (no extra kernels); only logits of two different dtypes (e.g. one batch
// computed outside the autocast region) are brought to float32.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gan_d_loss_autocast(
    const at::Tensor& real, const at::Tensor& fake, c10::string_view kind, c10::string_view reduction,
    double real_label, double fake_label, bool stats) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  at::Tensor r = real, f = fake;
  if (r.scalar_type() != f.scalar_type() && r.is_floating_point() && f.is_floating_point()) {
    const auto t = at::promote_types(at::promote_types(r.scalar_type(), f.scalar_type()), at::kFloat);
    r = r.to(t);
    f = f.to(t);
  }
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastgan::gan_d_loss", "")
                       .typed<decltype(gan_d_loss_cpu)>();
  return op.call(r, f, kind, reduction, real_label, fake_label, stats);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gan_g_loss_autocast(const at::Tensor& fake,
                                                                   const c10::optional<at::Tensor>& real,
                                                                   c10::string_view kind,
                                                                   c10::string_view reduction) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  at::Tensor f = fake;
  c10::optional<at::Tensor> r = real;
  if (r.has_value() && r->scalar_type() != f.scalar_type() && r->is_floating_point() &&
      f.is_floating_point()) {
    const auto t = at::promote_types(at::promote_types(r->scalar_type(), f.scalar_type()), at::kFloat);
    r = r->to(t);
    f = f.to(t);
  }
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastgan::gan_g_loss", "")
                       .typed<decltype(gan_g_loss_cpu)>();
  return op.call(f, r, kind, reduction);
}

// ---- autograd (device independent; lives here because this file is compiled in every build) ----
// In C++ rather than torch.library.register_autograd: a loss call is a few microseconds of kernel,
// and the Python autograd path would cost several times that on every call, forward and backward.
// The saved gradients are outputs of the forward op, so a double backward reaches this backward
// with gradients for them; it then applies the Hessian of the loss (ATen ops, differentiable).

using DLossSig = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, c10::string_view, c10::string_view, double, double, bool);
using GLossSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const c10::optional<at::Tensor>&,
                                                                c10::string_view, c10::string_view);
using BackwardSig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                       at::ScalarType);

at::Tensor add_opt(const at::Tensor& a, const at::Tensor& b) { return a.defined() ? a + b : b; }

// Hessian of the loss w.r.t. the logits of both sides applied to (cot0, cot1), the incoming
// gradients of the saved d loss / d logits (undefined: zero). x1 undefined: a one-sided G loss.
// With z_i = s_i x_i + tau_i mean(x_other) and T = <cot0, g0> + <cot1, g1>:
//   alpha_i = dT/dz_i = scale_i l''(z_i) (s_i cot_i + tau_i sum(cot_other) / n_other)
//   dT/dx_i = s_i alpha_i + tau_other sum(alpha_other) / n_i
std::array<at::Tensor, 2> loss_hvp(const Spec& sp, bool mean, const at::Tensor (&x)[2],
                                   const at::Tensor (&cot)[2]) {
  if (sp.paired) {
    // z_i = s (x0_i - x1_i), g0 = scale a s sigmoid(z) = -g1:
    //   alpha_i = scale a sigmoid'(z_i) s (cot0_i - cot1_i),  dT/dx0 = s alpha = -dT/dx1
    const auto t = at::toOpMathType(x[0].scalar_type());
    const Coef& c = sp.side[0];
    const at::Tensor sig = at::sigmoid((x[0].to(t) - x[1].to(t)) * c.s);
    at::Tensor diff = cot[0].defined() ? cot[0].to(t) : at::zeros_like(sig);
    if (cot[1].defined()) diff = diff - cot[1].to(t);
    at::Tensor out = sig * (1 - sig) * diff * (c.a * c.s * c.s);
    if (mean) out = out.div(c10::Scalar(x[0].sym_numel()));
    return {out.to(x[0].scalar_type()), out.neg().to(x[1].scalar_type())};
  }
  // Sizes as SymInts: under torch.compile / opcheck the backward runs on symbolic shapes.
  const int sides = x[1].defined() ? 2 : 1;
  const bool coupled = sp.coupled && sides == 2;
  at::Tensor xa[2], cmean[2], alpha[2];
  for (int i = 0; i < sides; i++) {
    xa[i] = x[i].to(at::toOpMathType(x[i].scalar_type()));
    cmean[i] = cot[i].defined() ? cot[i].to(xa[i].scalar_type()).mean() : at::zeros({}, xa[i].options());
  }
  for (int i = 0; i < sides; i++) {
    const Coef& c = sp.side[i];
    at::Tensor d2;
    if (sp.form == Form::Softplus) {
      at::Tensor z = xa[i] * c.s;
      if (coupled) z = z + xa[1 - i].mean() * c.tau;
      const at::Tensor sig = at::sigmoid(z);
      d2 = sig * (1 - sig) * c.a;
    } else if (sp.form == Form::Square) {
      d2 = at::ones_like(xa[i]);
    } else {
      d2 = at::zeros_like(xa[i]);  // hinge, linear: piecewise linear
    }
    at::Tensor inner = cot[i].defined() ? cot[i].to(xa[i].scalar_type()) * c.s : at::zeros_like(xa[i]);
    if (coupled) inner = inner + cmean[1 - i] * c.tau;
    alpha[i] = d2 * inner;
    if (mean) alpha[i] = alpha[i].div(c10::Scalar(x[i].sym_numel()));
  }
  std::array<at::Tensor, 2> out;
  for (int i = 0; i < sides; i++) {
    out[i] = alpha[i] * sp.side[i].s;
    if (coupled) out[i] = out[i] + (alpha[1 - i].sum() * sp.side[1 - i].tau).div(c10::Scalar(x[i].sym_numel()));
    out[i] = out[i].to(x[i].scalar_type());
  }
  return out;
}

// d mean(sigmoid(x)) / dx * g
at::Tensor stats_grad(const at::Tensor& x, const at::Tensor& g) {
  const at::Tensor s = at::sigmoid(x.to(g.scalar_type()));
  return (s * (1 - s) * g).div(c10::Scalar(x.sym_numel())).to(x.scalar_type());
}

class LossBackwardFn : public torch::autograd::Function<LossBackwardFn> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& grad, const at::Tensor& g0,
                               const at::Tensor& g1, at::ScalarType dtype) {
    at::AutoDispatchBelowADInplaceOrView below;
    static auto op = find_op<BackwardSig>("fastgan::gan_loss_backward");
    auto [o0, o1] = op.call(grad, g0, g1, dtype);
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({grad, g0, g1});
    return {o0, o1};
  }
  // (grad * g0, grad * g1) is bilinear.
  static variable_list backward(AutogradContext* ctx, variable_list u) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &grad = saved[0], &g0 = saved[1], &g1 = saved[2];
    at::Tensor dgrad, dg[2];
    const at::Tensor* g[2] = {&g0, &g1};
    for (int k = 0; k < 2; k++) {
      if (!u[k].defined()) continue;
      const at::Tensor uk = u[k].to(g[k]->scalar_type());
      if (ctx->needs_input_grad(0)) dgrad = add_opt(dgrad, (uk * *g[k]).sum());
      if (ctx->needs_input_grad(1 + k)) dg[k] = uk * grad.to(g[k]->scalar_type()).reshape({});
    }
    if (dgrad.defined()) dgrad = dgrad.reshape(grad.sizes()).to(grad.scalar_type());
    return {dgrad, dg[0], dg[1], at::Tensor()};
  }
};

// Through the dispatcher (autograd, tracing and device dispatch all apply).
std::tuple<at::Tensor, at::Tensor> loss_backward(const at::Tensor& grad, const at::Tensor& g0,
                                                 const at::Tensor& g1, at::ScalarType dtype) {
  static auto op = find_op<BackwardSig>("fastgan::gan_loss_backward");
  return op.call(grad, g0, g1, dtype);
}

class DLossFn : public torch::autograd::Function<DLossFn> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& real, const at::Tensor& fake,
                               std::string kind, std::string reduction, double real_label, double fake_label,
                               bool stats) {
    at::AutoDispatchBelowADInplaceOrView below;
    static auto op = find_op<DLossSig>("fastgan::gan_d_loss");
    auto [loss, st, g0, g1] = op.call(real, fake, kind, reduction, real_label, fake_label, stats);
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({real, fake, g0, g1});
    ctx->saved_data["kind"] = kind;
    ctx->saved_data["mean"] = reduction == "mean";
    ctx->saved_data["labels"] = std::vector<double>{real_label, fake_label};
    return {loss, st, g0, g1};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &real = saved[0], &fake = saved[1], &g0 = saved[2], &g1 = saved[3];
    at::Tensor dr, df;
    if (grads[0].defined()) std::tie(dr, df) = loss_backward(grads[0], g0, g1, real.scalar_type());
    if (grads[1].defined() && grads[1].sym_numel() == 2) {
      dr = add_opt(dr, stats_grad(real, grads[1][0]));
      df = add_opt(df, stats_grad(fake, grads[1][1]));
    }
    if (grads[2].defined() || grads[3].defined()) {
      const auto labels = ctx->saved_data["labels"].toDoubleVector();
      const Spec sp = d_spec(parse_kind(ctx->saved_data["kind"].toStringRef()), labels[0], labels[1]);
      auto h = loss_hvp(sp, ctx->saved_data["mean"].toBool(), {real, fake}, {grads[2], grads[3]});
      dr = add_opt(dr, h[0]);
      df = add_opt(df, h[1]);
    }
    return {dr, df, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

class GLossFn : public torch::autograd::Function<GLossFn> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& fake, const c10::optional<at::Tensor>& real,
                               std::string kind, std::string reduction) {
    at::AutoDispatchBelowADInplaceOrView below;
    static auto op = find_op<GLossSig>("fastgan::gan_g_loss");
    auto [loss, g0, g1] = op.call(fake, real, kind, reduction);
    const Kind k = parse_kind(kind);
    const bool has_real = real.has_value() && (k == Kind::Rals || k == Kind::Rpgan);
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({fake, has_real ? *real : at::Tensor(), g0, g1});
    ctx->saved_data["kind"] = kind;
    ctx->saved_data["mean"] = reduction == "mean";
    ctx->saved_data["has_real"] = has_real;
    return {loss, g0, g1};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &fake = saved[0], &real = saved[1], &g0 = saved[2], &g1 = saved[3];
    const bool has_real = ctx->saved_data["has_real"].toBool();
    at::Tensor df, dr;
    if (grads[0].defined()) std::tie(df, dr) = loss_backward(grads[0], g0, g1, fake.scalar_type());
    if (grads[1].defined() || (has_real && grads[2].defined())) {
      const Spec sp = g_spec(parse_kind(ctx->saved_data["kind"].toStringRef()));
      auto h = loss_hvp(sp, ctx->saved_data["mean"].toBool(), {fake, has_real ? real : at::Tensor()},
                        {grads[1], has_real ? grads[2] : at::Tensor()});
      df = add_opt(df, h[0]);
      if (has_real) dr = add_opt(dr, h[1]);
    }
    return {df, has_real ? dr : at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gan_d_loss_autograd(
    const at::Tensor& real, const at::Tensor& fake, c10::string_view kind, c10::string_view reduction,
    double real_label, double fake_label, bool stats) {
  auto o = DLossFn::apply(real, fake, std::string(kind), std::string(reduction), real_label, fake_label, stats);
  return {o[0], o[1], o[2], o[3]};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gan_g_loss_autograd(const at::Tensor& fake,
                                                                   const c10::optional<at::Tensor>& real,
                                                                   c10::string_view kind,
                                                                   c10::string_view reduction) {
  auto o = GLossFn::apply(fake, real, std::string(kind), std::string(reduction));
  return {o[0], o[1], o[2]};
}

std::tuple<at::Tensor, at::Tensor> gan_loss_backward_autograd(const at::Tensor& grad, const at::Tensor& g0,
                                                              const at::Tensor& g1, at::ScalarType dtype) {
  auto o = LossBackwardFn::apply(grad, g0, g1, dtype);
  return {o[0], o[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, Autograd, m) {
  m.impl("gan_d_loss", &gan_d_loss_autograd);
  m.impl("gan_g_loss", &gan_g_loss_autograd);
  m.impl("gan_loss_backward", &gan_loss_backward_autograd);
}

TORCH_LIBRARY_IMPL(fastgan, CPU, m) {
  m.impl("gan_d_loss", &gan_d_loss_cpu);
  m.impl("gan_g_loss", &gan_g_loss_cpu);
  m.impl("gan_loss_backward", &gan_loss_backward_cpu);
}

TORCH_LIBRARY_IMPL(fastgan, AutocastCPU, m) {
  m.impl("gan_d_loss", &gan_d_loss_autocast);
  m.impl("gan_g_loss", &gan_g_loss_autocast);
}
TORCH_LIBRARY_IMPL(fastgan, AutocastCUDA, m) {
  m.impl("gan_d_loss", &gan_d_loss_autocast);
  m.impl("gan_g_loss", &gan_g_loss_autocast);
}

}  // namespace gan_loss
}  // namespace fastgan
