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
#include "common/autograd.h"
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
// E > 0: per-(sample, channel) tables, entry (m / E) * C + c (E = the elements of one sample).
template <typename scalar_t, Act A>
void apply_loop(const at::Tensor& x, const ChannelLayout& l, const std::vector<acc_t<scalar_t>>& scale,
                const std::vector<acc_t<scalar_t>>& shift, at::Tensor& y, double alpha, int64_t E = 0) {
  using IO = cpu::VecIO<scalar_t>;
  using acc = typename IO::acc;
  using V = typename IO::V;
  constexpr int K = IO::K;
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  scalar_t* yp = y.mutable_data_ptr<scalar_t>();
  const V valpha = V(acc(alpha));
  at::parallel_for(0, x.numel(), kGrain, [&](int64_t begin, int64_t end) {
    for_each_run(l, begin, end, [&](int64_t m, int64_t len, int64_t c0, int64_t cs) {
      const int64_t c = E ? (m / E) * l.C + c0 : c0;  // the table entry
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
// dx = A g + B u + C elementwise, from tables (per channel, or per (sample, channel) when E > 0).
template <typename scalar_t, Act A, Ref R>
void dx_loop(const at::Tensor& g, const at::Tensor& ref, const ChannelLayout& l, const std::vector<acc_t<scalar_t>>& c1,
             const std::vector<acc_t<scalar_t>>& c2, const std::vector<acc_t<scalar_t>>& c3,
             const std::vector<acc_t<scalar_t>>& ca, const std::vector<acc_t<scalar_t>>& cb,
             const std::vector<acc_t<scalar_t>>& cc, double alpha, at::Tensor& gx, int64_t E) {
  using IO = cpu::VecIO<scalar_t>;
  using acc = typename IO::acc;
  using V = typename IO::V;
  constexpr int K = IO::K;
  const scalar_t* gp = g.const_data_ptr<scalar_t>();
  const scalar_t* rp = ref.const_data_ptr<scalar_t>();
  scalar_t* gxp = gx.mutable_data_ptr<scalar_t>();
  const V valpha = V(acc(alpha)), vinv = V(acc(alpha != 0 ? 1.0 / alpha : 0.0));
  at::parallel_for(0, g.numel(), kGrain, [&](int64_t begin, int64_t end) {
    for_each_run(l, begin, end, [&](int64_t m, int64_t len, int64_t c0, int64_t cs) {
      const int64_t c = E ? (m / E) * l.C + c0 : c0;  // the table entry
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
  dx_loop<scalar_t, A, R>(g, ref, l, c1, c2, c3, ca, cb, cc, alpha, gx, 0);
}

// ---- class-conditional (per-(sample, channel) affine) ----------------------------------------
// Per (n, c): sg = sum g, sgu = sum g u over the sample's H*W values of the channel (double).
template <typename scalar_t, Act A>
void class_sums_loop(const at::Tensor& g, const at::Tensor& x, const ChannelLayout& l, int64_t N,
                     const std::vector<acc_t<scalar_t>>& c1, const std::vector<acc_t<scalar_t>>& c2,
                     const std::vector<acc_t<scalar_t>>& c3, double alpha, std::vector<double>& sums) {
  using IO = cpu::VecIO<scalar_t>;
  using acc = typename IO::acc;
  using V = typename IO::V;
  constexpr int K = IO::K;
  const int64_t C = l.C, S = l.S;
  const scalar_t* gp = g.const_data_ptr<scalar_t>();
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const V valpha = V(acc(alpha)), vinv = V(acc(0));
  if (S == 1) {  // channels_last: sample n is rows [n HW, (n + 1) HW) of C channels
    const int64_t HW = l.A / N;
    at::parallel_for(0, N, 1, [&](int64_t n0, int64_t n1) {
      std::vector<acc> fs(C + K, acc(0)), fu(C + K, acc(0));
      for (int64_t n = n0; n < n1; n++) {
        const int64_t t = n * C;
        std::vector<double> ds(C, 0.0), du(C, 0.0);
        auto flush = [&] {
          for (int64_t c = 0; c < C; c++) {
            ds[c] += fs[c];
            du[c] += fu[c];
            fs[c] = fu[c] = acc(0);
          }
        };
        for (int64_t a = n * HW; a < (n + 1) * HW; a++) {
          const int64_t off = a * C;
          for (int64_t c = 0; c < C; c += K) {
            const int k = int(std::min<int64_t>(K, C - c));
            V s, u;
            slope_and_u<A, Ref::X>(IO::load(xp + off + c, k), V::loadu(c1.data() + t + c), V::loadu(c2.data() + t + c),
                                   V::loadu(c3.data() + t + c), valpha, vinv, s, u);
            V gg = V::set(V(0), IO::load(gp + off + c, k) * s, k);
            (V::loadu(fs.data() + c) + gg).store(fs.data() + c);
            (V::loadu(fu.data() + c) + gg * u).store(fu.data() + c);
          }
          if ((a - n * HW) % 128 == 127) flush();
        }
        flush();
        for (int64_t c = 0; c < C; c++) {
          sums[(t + c) * 2] = ds[c];
          sums[(t + c) * 2 + 1] = du[c];
        }
      }
    });
  } else {  // a run of S = H*W values per (n, c): row r = n C + c is its table entry
    at::parallel_for(0, l.A * C, std::max<int64_t>(1, kGrain / S), [&](int64_t r0, int64_t r1) {
      alignas(64) acc buf[K];
      for (int64_t r = r0; r < r1; r++) {
        const int64_t off = r * S;
        const V v1(c1[r]), v2(c2[r]), v3(c3[r]);
        V as(0), au(0);
        for (int64_t i = 0; i < S; i += K) {
          const int k = int(std::min<int64_t>(K, S - i));
          V s, u;
          slope_and_u<A, Ref::X>(IO::load(xp + off + i, k), v1, v2, v3, valpha, vinv, s, u);
          V gg = IO::load(gp + off + i, k) * s;
          if (k < K) gg = V::set(V(0), gg, k);
          as = as + gg;
          au = au + gg * u;
        }
        double ts = 0, tu = 0;
        as.store(buf);
        for (int j = 0; j < K; j++) ts += buf[j];
        au.store(buf);
        for (int j = 0; j < K; j++) tu += buf[j];
        sums[r * 2] = ts;
        sums[r * 2 + 1] = tu;
      }
    });
  }
}

// scale/shift per (n, c) (+ K spare entries for the vector loads past the end).
template <typename acc>
void class_tables(int64_t N, int64_t C, const int64_t* y, const acc* w, const acc* b, const acc* mean, const acc* var,
                  double eps, int K, std::vector<acc>& scale, std::vector<acc>& shift) {
  scale.assign(N * C + K, acc(0));
  shift.assign(N * C + K, acc(0));
  for (int64_t n = 0; n < N; n++) {
    for (int64_t c = 0; c < C; c++) {
      const int64_t k = y[n] * C + c;
      FwdCoef f = fwd_coef(double(mean[c]), double(var[c]), double(w[k]), double(b[k]), eps);
      scale[n * C + c] = acc(f.scale);
      shift[n * C + c] = acc(f.shift);
    }
  }
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

  static void class_forward(const at::Tensor& x, const ChannelLayout& l, bool training, const at::Tensor& y,
                            const at::Tensor& w, const at::Tensor& b, at::Tensor& mean, at::Tensor& var, double eps,
                            at::Tensor& out, Act act, double alpha) {
    FASTGAN_DISPATCH_FLOATING(x.scalar_type(), "class_batch_norm_act_cpu", [&] {
      if (training) stats_loop<scalar_t>(x, l, mean, var);
      using acc = acc_t<scalar_t>;
      constexpr int K = at::vec::Vectorized<acc>::size();
      const int64_t N = x.size(0), C = l.C;
      std::vector<acc> scale, shift;
      class_tables<acc>(N, C, y.const_data_ptr<int64_t>(), w.const_data_ptr<acc>(), b.const_data_ptr<acc>(),
                        mean.const_data_ptr<acc>(), var.const_data_ptr<acc>(), eps, K, scale, shift);
      FASTGAN_BNA_DISPATCH_ACT(act, [&] { apply_loop<scalar_t, kAct>(x, l, scale, shift, out, alpha, x.numel() / N); });
    });
  }

  static void class_backward(const at::Tensor& g, const at::Tensor& x, const ChannelLayout& l, const at::Tensor& y,
                             const at::Tensor& mean, const at::Tensor& var, const at::Tensor& w, const at::Tensor& b,
                             const at::Tensor& gm, const at::Tensor& gv, bool training, double eps, Act act,
                             double alpha, at::Tensor& gx, at::Tensor& dw, at::Tensor& db) {
    FASTGAN_DISPATCH_FLOATING(g.scalar_type(), "class_batch_norm_act_backward_cpu", [&] {
      using acc = acc_t<scalar_t>;
      constexpr int K = at::vec::Vectorized<acc>::size();
      const int64_t N = x.size(0), C = l.C;
      const double M = double(x.numel() / C);
      const int64_t* yp = y.const_data_ptr<int64_t>();
      const acc* mp = mean.const_data_ptr<acc>();
      const acc* vp = var.const_data_ptr<acc>();
      const acc* wp = w.const_data_ptr<acc>();
      const acc* gmp = gm.defined() ? gm.const_data_ptr<acc>() : nullptr;
      const acc* gvp = gv.defined() ? gv.const_data_ptr<acc>() : nullptr;
      std::vector<acc> c1, c2;
      class_tables<acc>(N, C, yp, wp, b.const_data_ptr<acc>(), mp, vp, eps, K, c1, c2);
      std::vector<acc> c3(N * C + K, acc(0)), ca(N * C + K, acc(0)), cb(N * C + K, acc(0)), cc(N * C + K, acc(0));
      for (int64_t n = 0; n < N; n++)
        for (int64_t c = 0; c < C; c++) c3[n * C + c] = mp[c];
      std::vector<double> sums(size_t(N * C) * 2, 0.0);
      FASTGAN_BNA_DISPATCH_ACT(act, [&] { class_sums_loop<scalar_t, kAct>(g, x, l, N, c1, c2, c3, alpha, sums); });
      double* dwp = dw.mutable_data_ptr<double>();
      double* dbp = db.mutable_data_ptr<double>();
      for (int64_t c = 0; c < C; c++) {
        double B, Cc;
        class_bwd_channel(c, N, C, yp, sums.data(), training, M, double(vp[c]), wp, gmp ? double(gmp[c]) : 0.0,
                          gvp ? double(gvp[c]) : 0.0, eps, ca.data() + c, B, Cc, dwp + c, dbp + c);
        for (int64_t n = 0; n < N; n++) {
          cb[n * C + c] = acc(B);
          cc[n * C + c] = acc(Cc);
        }
      }
      FASTGAN_BNA_DISPATCH_ACT(act, [&] {
        dx_loop<scalar_t, kAct, Ref::X>(g, x, l, c1, c2, c3, ca, cb, cc, alpha, gx, x.numel() / N);
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

std::tuple<at::Tensor, at::Tensor, at::Tensor> cbna_cpu(
    const at::Tensor& x, const at::Tensor& y, const at::Tensor& weight, const at::Tensor& bias,
    const c10::optional<at::Tensor>& running_mean, const c10::optional<at::Tensor>& running_var, bool training,
    double eps, c10::string_view act, double alpha) {
  return class_forward_impl<CpuKernels>(x, y, weight, bias, running_mean, running_var, training, eps,
                                        std::string(act), alpha);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cbna_backward_cpu(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& y, const at::Tensor& mean, const at::Tensor& var,
    const at::Tensor& weight, const at::Tensor& bias, const c10::optional<at::Tensor>& grad_mean,
    const c10::optional<at::Tensor>& grad_var, bool training, double eps, c10::string_view act, double alpha) {
  return class_backward_impl<CpuKernels>(grad, x, y, mean, var, weight, bias, grad_mean, grad_var, training, eps,
                                         std::string(act), alpha);
}

// ---- autograd of batch_norm_act (device independent; this file is compiled in every build) --------
// First order in C++ (fastgan/ops/batch_norm_act.py's module doc: what the backward keeps); the
// backward op's own autograd (the second derivative, cold code) stays in Python, reached through
// the dispatcher.
using BnaSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const c10::optional<at::Tensor>&, const c10::optional<at::Tensor>&,
    const c10::optional<at::Tensor>&, const c10::optional<at::Tensor>&, bool, double, c10::string_view, double, bool);
using BnaBackwardSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&,
    const c10::optional<at::Tensor>&, const c10::optional<at::Tensor>&, const c10::optional<at::Tensor>&, bool, double,
    c10::string_view, double, bool);

bool invertible(const std::string& act, double alpha) { return act == "linear" || (act == "lrelu" && alpha > 0); }

class BnaFn : public torch::autograd::Function<BnaFn> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const c10::optional<at::Tensor>& weight,
                               const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& running_mean,
                               const c10::optional<at::Tensor>& running_var, bool training, double eps, std::string act,
                               double alpha, bool keep_input) {
    at::AutoDispatchBelowADInplaceOrView below;
    static auto op = find_op<BnaSig>("fastgan::batch_norm_act");
    auto [y, mean, var] = op.call(x, weight, bias, running_mean, running_var, training, eps, act, alpha, keep_input);
    const bool from_y = !keep_input && invertible(act, alpha);
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({from_y ? y : x, mean, var, present(weight) ? *weight : at::Tensor(),
                            present(bias) ? *bias : at::Tensor()});
    ctx->saved_data["act"] = act;
    ctx->saved_data["p"] = std::vector<double>{eps, alpha};
    ctx->saved_data["flags"] = std::vector<bool>{training, from_y};
    return {y, mean, var};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list out(10);
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &ref = saved[0], &weight = saved[3], &bias = saved[4];
    const auto p = ctx->saved_data["p"].toDoubleVector();
    const auto flags = ctx->saved_data["flags"].toBoolList();
    const bool training = flags.get(0), from_y = flags.get(1);
    const bool has_w = weight.defined(), has_b = bias.defined();
    // needs_input_grad counts the tensors present: x, then weight and bias where given.
    const bool need_x = ctx->needs_input_grad(0), need_w = has_w && ctx->needs_input_grad(1),
               need_b = has_b && ctx->needs_input_grad(1 + has_w);
    const bool has_stat_grads = training && (grads[1].defined() || grads[2].defined());
    if (!grads[0].defined() && !has_stat_grads) return out;
    if (!(need_x || need_w || need_b)) return out;
    const at::Tensor gy = grads[0].defined() ? grads[0] : at::zeros_like(ref);
    static auto op = find_op<BnaBackwardSig>("fastgan::batch_norm_act_backward");
    // eval: mean/var are the running statistics, buffers that get no gradient
    auto [gx, gw, gb] = op.call(gy, ref, saved[1], saved[2], opt(weight), opt(bias),
                                training ? opt(grads[1]) : c10::nullopt, training ? opt(grads[2]) : c10::nullopt,
                                training, p[0], ctx->saved_data["act"].toStringRef(), p[1], from_y);
    if (need_x) out[0] = gx;
    if (need_w) out[1] = gw;
    if (need_b) out[2] = gb;
    return out;
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> bna_autograd(
    const at::Tensor& x, const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
    const c10::optional<at::Tensor>& running_mean, const c10::optional<at::Tensor>& running_var, bool training,
    double eps, c10::string_view act, double alpha, bool keep_input) {
  auto o = BnaFn::apply(x, weight, bias, running_mean, running_var, training, eps, std::string(act), alpha, keep_input);
  return {o[0], o[1], o[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, Autograd, m) { m.impl("batch_norm_act", &bna_autograd); }

TORCH_LIBRARY_IMPL(fastgan, CPU, m) {
  m.impl("batch_norm_act", &bna_cpu);
  m.impl("batch_norm_act_backward", &bna_backward_cpu);
  m.impl("batch_norm_act_update_stats_", &bna_update_cpu);
  m.impl("class_batch_norm_act", &cbna_cpu);
  m.impl("class_batch_norm_act_backward", &cbna_backward_cpu);
}

}  // namespace batch_norm_act
}  // namespace fastgan
