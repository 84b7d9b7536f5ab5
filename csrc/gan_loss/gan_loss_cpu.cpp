// GAN losses on the CPU: at::vec over fixed chunks of each side, per-chunk partial sums in double
// added in chunk order, so the result does not depend on the number of threads.
#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <torch/library.h>

#include <vector>

#include "gan_loss/gan_loss.h"

namespace fastgan {
namespace gan_loss {
namespace {

using vmath::Vec;
constexpr int64_t kChunk = 16384;  // elements per parallel task
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

}  // namespace

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
