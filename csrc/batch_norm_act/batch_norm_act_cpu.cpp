// batch_norm_act on the CPU: at::parallel_for, at::vec inside.
//
// Reductions (batch statistics, the backward's two sums) keep per-thread partials in double:
//   S > 1 (NCHW-like): one run of S values per (n, c); vector accumulators over the run.
//   S == 1 (channels_last): rows of C values; per-thread per-channel vector accumulators.
// Statistics use Welford updates per vector lane (float for fp16/bf16/float) and Chan merges in
// double. Elementwise passes walk flat memory in runs (common/cpu_loops.h); nothing is copied for
// channels_last.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "batch_norm_act/batch_norm_act.h"
#include "common/cpu_loops.h"

namespace fastgan {
namespace batch_norm_act {
namespace {

using cpu::for_each_run;
constexpr int64_t kGrain = 16384;

// ---- batch statistics ------------------------------------------------------------------------
template <typename scalar_t>
void stats_loop(const at::Tensor& x, const ChannelLayout& l, at::Tensor& mean_out, at::Tensor& var_out) {
  using IO = cpu::VecIO<scalar_t>;
  using acc = typename IO::acc;
  using V = typename IO::V;
  constexpr int K = IO::K;
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const int64_t C = l.C, S = l.S;
  const int nthreads = at::get_num_threads();
  std::vector<double> pn(size_t(nthreads) * C, 0.0), pm(pn.size(), 0.0), pq(pn.size(), 0.0);
  // Welford on x - shift[c], shift[c] = the channel's first value: an exact subtraction for values
  // near it, so a large common offset costs no precision in the float accumulators.
  std::vector<acc> shift(C + K, acc(0));
  for (int64_t c = 0; c < C; c++) shift[c] = acc(xp[c * S]);

  if (S == 1) {
    // rows of C consecutive channels; every channel of a chunk sees the same count
    at::parallel_for(0, l.A, std::max<int64_t>(1, kGrain / std::max<int64_t>(C, 1)), [&](int64_t a0, int64_t a1) {
      const size_t t = size_t(at::get_thread_num()) * C;
      std::vector<acc> m(C + K, acc(0)), q(C + K, acc(0));
      for (int64_t a = a0; a < a1; a++) {
        const V inv(acc(1) / acc(a - a0 + 1));
        const scalar_t* row = xp + a * C;
        for (int64_t c = 0; c < C; c += K) {
          const int n = int(std::min<int64_t>(K, C - c));
          V xv = IO::load(row + c, n) - V::loadu(shift.data() + c);
          V mv = V::loadu(m.data() + c), qv = V::loadu(q.data() + c);
          V d = xv - mv;
          mv = mv + d * inv;
          qv = qv + d * (xv - mv);
          mv.store(m.data() + c);
          qv.store(q.data() + c);
        }
      }
      const double cnt = double(a1 - a0);
      for (int64_t c = 0; c < C; c++) chan_merge(pn[t + c], pm[t + c], pq[t + c], cnt, m[c], q[c]);
    });
  } else {
    // runs of S values of one channel
    at::parallel_for(0, l.A * C, std::max<int64_t>(1, kGrain / S), [&](int64_t r0, int64_t r1) {
      const size_t t = size_t(at::get_thread_num()) * C;
      alignas(64) acc mb[K], qb[K];
      const int64_t nfull = S / K;
      for (int64_t r = r0; r < r1; r++) {
        const int64_t c = r % C;
        const scalar_t* p = xp + r * S;
        const V vshift(shift[c]);
        double n = 0, mean = 0, m2 = 0;
        if (nfull > 0) {
          V mv(0), qv(0);
          for (int64_t k = 0; k < nfull; k++) {
            V xv = IO::load(p + k * K, K) - vshift;
            V d = xv - mv;
            mv = mv + d * V(acc(1) / acc(k + 1));
            qv = qv + d * (xv - mv);
          }
          // K lanes with equal counts
          mv.store(mb);
          qv.store(qb);
          double lm = 0;
          for (int j = 0; j < K; j++) lm += mb[j];
          lm /= K;
          double lq = 0;
          for (int j = 0; j < K; j++) {
            const double d = double(mb[j]) - lm;
            lq += double(qb[j]) + double(nfull) * d * d;
          }
          n = double(nfull * K);
          mean = lm;
          m2 = lq;
        }
        for (int64_t i = nfull * K; i < S; i++) chan_merge(n, mean, m2, 1.0, double(acc(p[i]) - shift[c]), 0.0);
        chan_merge(pn[t + c], pm[t + c], pq[t + c], n, mean, m2);
      }
    });
  }
  acc* mo = mean_out.mutable_data_ptr<acc>();
  acc* vo = var_out.mutable_data_ptr<acc>();
  for (int64_t c = 0; c < C; c++) {
    double n = 0, mean = 0, m2 = 0;
    for (int t = 0; t < nthreads; t++) {
      const size_t i = size_t(t) * C + c;
      chan_merge(n, mean, m2, pn[i], pm[i], pq[i]);
    }
    mo[c] = acc(mean + double(shift[c]));
    vo[c] = acc(n > 0 ? std::max(m2 / n, 0.0) : 0.0);
  }
}

// ---- forward elementwise: y = act(x * scale + shift) -----------------------------------------
template <typename scalar_t, Act A>
void apply_loop(const at::Tensor& x, const ChannelLayout& l, const std::vector<acc_t<scalar_t>>& scale,
                const std::vector<acc_t<scalar_t>>& shift, at::Tensor& y, double alpha) {
  using IO = cpu::VecIO<scalar_t>;
  using acc = typename IO::acc;
  using V = typename IO::V;
  constexpr int K = IO::K;
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  scalar_t* yp = y.mutable_data_ptr<scalar_t>();
  const V valpha = V(acc(alpha));
  at::parallel_for(0, x.numel(), kGrain, [&](int64_t begin, int64_t end) {
    for_each_run(l, begin, end, [&](int64_t m, int64_t len, int64_t c, int64_t cs) {
      const V sc0(scale[c]), sh0(shift[c]);
      for (int64_t i = 0; i < len; i += K) {
        const int n = int(std::min<int64_t>(K, len - i));
        const V sc = cs ? V::loadu(scale.data() + c + i, n) : sc0;
        const V sh = cs ? V::loadu(shift.data() + c + i, n) : sh0;
        IO::store(yp + m + i, act_f<A>(pre_act(IO::load(xp + m + i, n), sc, sh), valpha), n);
      }
    });
  });
}

// ---- backward ----------------------------------------------------------------------------------
template <typename scalar_t, Act A, Ref R>
void backward_loop(const at::Tensor& g, const at::Tensor& ref, const ChannelLayout& l,
                   const at::Tensor& mean, const at::Tensor& var, const at::Tensor& w, const at::Tensor& b,
                   const at::Tensor& gm, const at::Tensor& gv, bool training, double eps, double alpha,
                   at::Tensor& gx, at::Tensor& dw, at::Tensor& db) {
  using IO = cpu::VecIO<scalar_t>;
  using acc = typename IO::acc;
  using V = typename IO::V;
  constexpr int K = IO::K;
  const int64_t C = l.C, S = l.S;
  const double M = double(g.numel() / C);
  const scalar_t* gp = g.const_data_ptr<scalar_t>();
  const scalar_t* rp = ref.const_data_ptr<scalar_t>();
  scalar_t* gxp = gx.mutable_data_ptr<scalar_t>();
  const acc* meanp = mean.const_data_ptr<acc>();
  const acc* varp = var.const_data_ptr<acc>();
  const acc* wp = w.defined() ? w.const_data_ptr<acc>() : nullptr;
  const acc* bp = b.defined() ? b.const_data_ptr<acc>() : nullptr;
  const acc* gmp = gm.defined() ? gm.const_data_ptr<acc>() : nullptr;
  const acc* gvp = gv.defined() ? gv.const_data_ptr<acc>() : nullptr;
  auto coef = [&](int64_t c, double sg, double sgu) {
    return bwd_coef(R, training, sg, sgu, M, double(meanp[c]), double(varp[c]), wp ? double(wp[c]) : 1.0,
                    bp ? double(bp[c]) : 0.0, gmp ? double(gmp[c]) : 0.0, gvp ? double(gvp[c]) : 0.0, eps);
  };
  // what slope_and_u needs, per channel (K spare entries for the vector loads past the end)
  std::vector<acc> c1(C + K, acc(0)), c2(C + K, acc(0)), c3(C + K, acc(0));
  for (int64_t c = 0; c < C; c++) {
    BwdCoef k = coef(c, 0.0, 0.0);
    c1[c] = acc(k.c1);
    c2[c] = acc(k.c2);
    c3[c] = acc(k.c3);
  }
  const V valpha = V(acc(alpha)), vinv = V(acc(alpha != 0 ? 1.0 / alpha : 0.0));

  // pass 1: sum g and sum g u per channel
  const int nthreads = at::get_num_threads();
  std::vector<double> psg(size_t(nthreads) * C, 0.0), psu(psg.size(), 0.0);
  if (S == 1) {
    at::parallel_for(0, l.A, std::max<int64_t>(1, kGrain / std::max<int64_t>(C, 1)), [&](int64_t a0, int64_t a1) {
      const size_t t = size_t(at::get_thread_num()) * C;
      std::vector<acc> fs(C + K, acc(0)), fu(C + K, acc(0));
      auto flush = [&] {
        for (int64_t c = 0; c < C; c++) {
          psg[t + c] += fs[c];
          psu[t + c] += fu[c];
          fs[c] = fu[c] = acc(0);
        }
      };
      for (int64_t a = a0; a < a1; a++) {
        const int64_t off = a * C;
        for (int64_t c = 0; c < C; c += K) {
          const int n = int(std::min<int64_t>(K, C - c));
          V s, u;
          slope_and_u<A, R>(IO::load(rp + off + c, n), V::loadu(c1.data() + c), V::loadu(c2.data() + c),
                            V::loadu(c3.data() + c), valpha, vinv, s, u);
          V gg = IO::load(gp + off + c, n) * s;
          gg = V::set(V(0), gg, n);
          (V::loadu(fs.data() + c) + gg).store(fs.data() + c);
          (V::loadu(fu.data() + c) + gg * u).store(fu.data() + c);
        }
        if ((a - a0) % 128 == 127) flush();
      }
      flush();
    });
  } else {
    at::parallel_for(0, l.A * C, std::max<int64_t>(1, kGrain / S), [&](int64_t r0, int64_t r1) {
      const size_t t = size_t(at::get_thread_num()) * C;
      alignas(64) acc buf[K];
      for (int64_t r = r0; r < r1; r++) {
        const int64_t c = r % C, off = r * S;
        const V v1(c1[c]), v2(c2[c]), v3(c3[c]);
        V as(0), au(0);
        for (int64_t i = 0; i < S; i += K) {
          const int n = int(std::min<int64_t>(K, S - i));
          V s, u;
          slope_and_u<A, R>(IO::load(rp + off + i, n), v1, v2, v3, valpha, vinv, s, u);
          V gg = IO::load(gp + off + i, n) * s;
          if (n < K) gg = V::set(V(0), gg, n);
          as = as + gg;
          au = au + gg * u;
        }
        as.store(buf);
        double ts = 0;
        for (int j = 0; j < K; j++) ts += buf[j];
        au.store(buf);
        double tu = 0;
        for (int j = 0; j < K; j++) tu += buf[j];
        psg[t + c] += ts;
        psu[t + c] += tu;
      }
    });
  }
  // per-channel coefficients
  std::vector<acc> ca(C + K, acc(0)), cb(C + K, acc(0)), cc(C + K, acc(0));
  acc* dwp = dw.mutable_data_ptr<acc>();
  acc* dbp = db.mutable_data_ptr<acc>();
  for (int64_t c = 0; c < C; c++) {
    double sg = 0, su = 0;
    for (int t = 0; t < nthreads; t++) {
      sg += psg[size_t(t) * C + c];
      su += psu[size_t(t) * C + c];
    }
    BwdCoef k = coef(c, sg, su);
    ca[c] = acc(k.A);
    cb[c] = acc(k.B);
    cc[c] = acc(k.C);
    dwp[c] = acc(k.dw);
    dbp[c] = acc(k.db);
  }
  // pass 2: dx = A g + B u + C
  at::parallel_for(0, g.numel(), kGrain, [&](int64_t begin, int64_t end) {
    for_each_run(l, begin, end, [&](int64_t m, int64_t len, int64_t c, int64_t cs) {
      const V a0(ca[c]), b0(cb[c]), cc0(cc[c]), v10(c1[c]), v20(c2[c]), v30(c3[c]);
      for (int64_t i = 0; i < len; i += K) {
        const int n = int(std::min<int64_t>(K, len - i));
        V s, u;
        if (cs) {
          slope_and_u<A, R>(IO::load(rp + m + i, n), V::loadu(c1.data() + c + i), V::loadu(c2.data() + c + i),
                            V::loadu(c3.data() + c + i), valpha, vinv, s, u);
        } else {
          slope_and_u<A, R>(IO::load(rp + m + i, n), v10, v20, v30, valpha, vinv, s, u);
        }
        const V gg = IO::load(gp + m + i, n) * s;
        V d;
        if (cs) {
          d = fma_(V::loadu(ca.data() + c + i), gg, fma_(V::loadu(cb.data() + c + i), u, V::loadu(cc.data() + c + i)));
        } else {
          d = fma_(a0, gg, fma_(b0, u, cc0));
        }
        IO::store(gxp + m + i, d, n);
      }
    });
  });
}

struct CpuKernels {
  static void forward(const at::Tensor& x, const ChannelLayout& l, bool training, const at::Tensor& w,
                      const at::Tensor& b, at::Tensor& mean, at::Tensor& var, double eps, at::Tensor& y, Act act,
                      double alpha) {
    FASTGAN_DISPATCH_FLOATING(x.scalar_type(), "batch_norm_act_cpu", [&] {
      if (training) stats_loop<scalar_t>(x, l, mean, var);
      using acc = acc_t<scalar_t>;
      constexpr int K = at::vec::Vectorized<acc>::size();
      const int64_t C = l.C;
      const acc* mp = mean.const_data_ptr<acc>();
      const acc* vp = var.const_data_ptr<acc>();
      const acc* wp = w.defined() ? w.const_data_ptr<acc>() : nullptr;
      const acc* bp = b.defined() ? b.const_data_ptr<acc>() : nullptr;
      std::vector<acc> scale(C + K, acc(0)), shift(C + K, acc(0));
      for (int64_t c = 0; c < C; c++) {
        FwdCoef f = fwd_coef(double(mp[c]), double(vp[c]), wp ? double(wp[c]) : 1.0, bp ? double(bp[c]) : 0.0, eps);
        scale[c] = acc(f.scale);
        shift[c] = acc(f.shift);
      }
      FASTGAN_BNA_DISPATCH_ACT(act, [&] { apply_loop<scalar_t, kAct>(x, l, scale, shift, y, alpha); });
    });
  }

  static void backward(const at::Tensor& g, const at::Tensor& ref, const ChannelLayout& l, const at::Tensor& mean,
                       const at::Tensor& var, const at::Tensor& w, const at::Tensor& b, const at::Tensor& gm,
                       const at::Tensor& gv, bool training, double eps, Act act, double alpha, Ref r,
                       at::Tensor& gx, at::Tensor& dw, at::Tensor& db) {
    FASTGAN_DISPATCH_FLOATING(g.scalar_type(), "batch_norm_act_backward_cpu", [&] {
      FASTGAN_BNA_DISPATCH_ACT(act, [&] {
        if (r == Ref::X) {
          backward_loop<scalar_t, kAct, Ref::X>(g, ref, l, mean, var, w, b, gm, gv, training, eps, alpha, gx, dw, db);
        } else if constexpr (kAct != Act::Relu) {
          backward_loop<scalar_t, kAct, Ref::Y>(g, ref, l, mean, var, w, b, gm, gv, training, eps, alpha, gx, dw, db);
        }
      });
    });
  }

  static void update(at::Tensor& rm, at::Tensor& rv, const at::Tensor& mean, const at::Tensor& var,
                     const at::Tensor& nbt, double momentum, int64_t count) {
    double factor = momentum;
    if (nbt.defined()) factor = 1.0 / double(std::max<int64_t>(nbt.item<int64_t>(), 1));  // momentum=None
    at::Tensor m = mean.to(at::kDouble).contiguous(), v = var.to(at::kDouble).contiguous();
    const double* mp = m.const_data_ptr<double>();
    const double* vp = v.const_data_ptr<double>();
    FASTGAN_DISPATCH_FLOATING(rm.scalar_type(), "batch_norm_act_update_stats_cpu", [&] {
      scalar_t* rmp = rm.mutable_data_ptr<scalar_t>();
      scalar_t* rvp = rv.mutable_data_ptr<scalar_t>();
      for (int64_t c = 0; c < rm.numel(); c++) {
        double a = double(rmp[c]), b = double(rvp[c]);
        update_running(a, b, mp[c], vp[c], factor, double(count));
        rmp[c] = scalar_t(a);
        rvp[c] = scalar_t(b);
      }
    });
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> bna_cpu(
    const at::Tensor& x, const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
    const c10::optional<at::Tensor>& running_mean, const c10::optional<at::Tensor>& running_var, bool training,
    double eps, c10::string_view act, double alpha, bool /*keep_input*/) {
  return forward_impl<CpuKernels>(x, weight, bias, running_mean, running_var, training, eps, std::string(act), alpha);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bna_backward_cpu(
    const at::Tensor& grad, const at::Tensor& ref, const at::Tensor& mean, const at::Tensor& var,
    const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
    const c10::optional<at::Tensor>& grad_mean, const c10::optional<at::Tensor>& grad_var, bool training,
    double eps, c10::string_view act, double alpha, bool ref_is_output) {
  return backward_impl<CpuKernels>(grad, ref, mean, var, weight, bias, grad_mean, grad_var, training, eps,
                                   std::string(act), alpha, ref_is_output);
}

void bna_update_cpu(at::Tensor& running_mean, at::Tensor& running_var, const at::Tensor& mean,
                    const at::Tensor& var, const c10::optional<at::Tensor>& num_batches_tracked,
                    c10::optional<double> momentum, int64_t count) {
  update_impl<CpuKernels>(running_mean, running_var, mean, var, num_batches_tracked, momentum, count);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, CPU, m) {
  m.impl("batch_norm_act", &bna_cpu);
  m.impl("batch_norm_act_backward", &bna_backward_cpu);
  m.impl("batch_norm_act_update_stats_", &bna_update_cpu);
}

}  // namespace batch_norm_act
}  // namespace fastgan
