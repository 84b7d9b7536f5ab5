// batch_norm_act: y = act(batch_norm(x)), the math written once for CPU and CUDA.
//
// Per channel c (M = N*H*W values): mean, biased var, r = 1/sqrt(var + eps),
//   z = x * scale + shift  with scale = w * r, shift = b - mean * scale,   y = act(z).
// act is linear, relu or lrelu (slope alpha below zero).
//
// Backward (g = dy * act'(z), xhat = (x - mean) * r):
//   dbeta = sum g,  dgamma = sum g * xhat,
//   dx = w r (g - dbeta / M - xhat dgamma / M)            (training; eval: dx = w r g)
//        + gmean / M + 2 gvar xhat / (r M)                (gradients reaching the mean/var outputs,
//                                                          which appear in double backward)
// What the backward reads ("ref"):
//   Ref::Y  y itself (linear, lrelu with alpha > 0): z = act^-1(y), xhat = (z - b) / w.
//           Only y and the per-channel stats are kept: the memory of one activation.
//   Ref::X  x (relu, lrelu with alpha <= 0, or when asked): z is recomputed exactly as the
//           forward computed it (same fma), so act'(z) needs no mask.
// Both are written as  u = ref-dependent centred value, xhat = u * ku  (Ref::X: u = x - mean,
// ku = r; Ref::Y: u = z - b, ku = 1 / w), so the elementwise backward is dx = A g + B u + C with
// per-channel A, B, C.
// Class-conditional (class_batch_norm_act): the statistics are per channel as above, the affine
// parameters per (class, channel), gathered for each sample n by its label y[n]:
//   z = x * scale[n,c] + shift[n,c],  scale = w[y_n,c] r, shift = b[y_n,c] - mean scale.
// The kernels take per-(sample, channel) coefficient tables (the same elementwise kernels, a table
// index (i / E) * C + c with E = C*H*W, the elements of one sample). The backward keeps x (Ref::X)
// and sums per (n, c): sg = sum g, sgu = sum g u (g = dy * act'(z), u = x - mean), then per channel
//   Swg = sum_n w[y_n] sg,  Swgu = sum_n w[y_n] sgu,
//   dx = A[n,c] g + B u + C,  A = w[y_n] r,  B = -r^3 Swgu / M + 2 gv / M,  C = -r Swg / M + gm / M
// (training; eval: B = C = 0), dw[k,c] = r sum_{n: y_n = k} sgu, db[k,c] = sum_{n: y_n = k} sg.
#pragma once
#include <cmath>
#include <string>

#include "common/checks.h"
#include "common/dispatch.h"
#include "common/layout.h"

#if !defined(__CUDACC__)
#include <ATen/cpu/vec/vec.h>
#endif

namespace fastgan {
namespace batch_norm_act {

enum class Act : int { Linear, Relu, Lrelu };
enum class Ref : int { X, Y };

inline Act parse_act(const std::string& s) {
  if (s == "linear") return Act::Linear;
  if (s == "relu") return Act::Relu;
  if (s == "lrelu") return Act::Lrelu;
  FASTGAN_CHECK_ARG(false, "act", "unknown activation '", s, "'; expected one of linear, relu, lrelu");
  return Act::Linear;
}

// Can act be inverted from its output (so that the backward may keep y instead of x)?
inline bool invertible(Act a, double alpha) { return a == Act::Linear || (a == Act::Lrelu && alpha > 0); }

#define FASTGAN_BNA_DISPATCH_ACT(act, ...)                                             \
  [&] {                                                                                \
    using fastgan::batch_norm_act::Act;                                                \
    switch (act) {                                                                     \
      case Act::Linear: { constexpr Act kAct = Act::Linear; return __VA_ARGS__(); }    \
      case Act::Relu: { constexpr Act kAct = Act::Relu; return __VA_ARGS__(); }        \
      default: { constexpr Act kAct = Act::Lrelu; return __VA_ARGS__(); }              \
    }                                                                                  \
  }()

// ---- selection, scalar and (CPU) vector ----------------------------------------------------
template <class T> FASTGAN_HD T sel(bool c, T a, T b) { return c ? a : b; }
#if defined(__CUDACC__)
FASTGAN_HD float fma_(float a, float b, float c) { return fmaf(a, b, c); }
FASTGAN_HD double fma_(double a, double b, double c) { return fma(a, b, c); }
#else
template <class T> using Vec = at::vec::Vectorized<T>;
template <class T> inline Vec<T> sel(const Vec<T>& c, const Vec<T>& a, const Vec<T>& b) {
  return Vec<T>::blendv(b, a, c);
}
inline float fma_(float a, float b, float c) { return std::fma(a, b, c); }
inline double fma_(double a, double b, double c) { return std::fma(a, b, c); }
template <class T> inline Vec<T> fma_(const Vec<T>& a, const Vec<T>& b, const Vec<T>& c) {
  return at::vec::fmadd(a, b, c);
}
#endif

// ---- elementwise math: V is float/double (host or device) or a CPU Vectorized ---------------
// z from x: the one formula used by the forward and by the Ref::X backward (bitwise identical z).
template <class V> FASTGAN_HD V pre_act(V x, V scale, V shift) { return fma_(x, scale, shift); }

// y = act(z); comparisons written so that NaN propagates.
template <Act A, class V> FASTGAN_HD V act_f(V z, V alpha) {
  if constexpr (A == Act::Linear) return z;
  else if constexpr (A == Act::Relu) return sel(z < V(0), V(0), z);
  else return sel(z < V(0), z * alpha, z);
}

// act'(z) from z.
template <Act A, class V> FASTGAN_HD V slope_z(V z, V alpha) {
  if constexpr (A == Act::Linear) return V(1);
  else if constexpr (A == Act::Relu) return sel(z > V(0), V(1), V(0));
  else return sel(z > V(0), V(1), alpha);
}

// Ref::Y: z = act^-1(y) and act'(z) from y (alpha > 0, so sign(y) == sign(z)).
template <Act A, class V> FASTGAN_HD void invert_y(V y, V alpha, V inv_alpha, V& z, V& s) {
  if constexpr (A == Act::Lrelu) {
    s = sel(y > V(0), V(1), alpha);
    z = y * sel(y > V(0), V(1), inv_alpha);
  } else {
    s = V(1);
    z = y;
  }
}

// For one element: the activation slope s and the centred value u (see the top of the file).
//   Ref::X: ref = x, c1 = scale, c2 = shift, c3 = mean.   Ref::Y: ref = y, c3 = bias.
template <Act A, Ref R, class V>
FASTGAN_HD void slope_and_u(V ref, V c1, V c2, V c3, V alpha, V inv_alpha, V& s, V& u) {
  if constexpr (R == Ref::X) {
    s = slope_z<A>(pre_act(ref, c1, c2), alpha);
    u = ref - c3;
  } else {
    V z;
    invert_y<A>(ref, alpha, inv_alpha, z, s);
    u = z - c3;
  }
}

// ---- per-channel math (double), shared by the CPU loops and the CUDA finalize kernels ---------
struct FwdCoef {
  double scale, shift;
};
FASTGAN_HD FwdCoef fwd_coef(double mean, double var, double w, double b, double eps) {
  double r = 1.0 / sqrt(var + eps);
  double scale = w * r;
  return {scale, b - mean * scale};
}

// Welford/Chan merge of (n, mean, m2) partial statistics.
FASTGAN_HD void chan_merge(double& n, double& mean, double& m2, double nb, double meanb, double m2b) {
  if (nb == 0) return;
  double n_ab = n + nb;
  double d = meanb - mean;
  double fb = nb / n_ab;
  mean += d * fb;
  m2 += m2b + d * d * n * fb;
  n = n_ab;
}

struct BwdCoef {
  double A, B, C;  // dx = A g + B u + C
  double dw, db;   // dgamma, dbeta
  double c1, c2, c3;  // what slope_and_u needs (see above)
};

// sg = sum g, sgu = sum g u over the channel's M values.
FASTGAN_HD BwdCoef bwd_coef(Ref ref, bool training, double sg, double sgu, double M, double mean,
                            double var, double w, double b, double gm, double gv, double eps) {
  BwdCoef k;
  double r = 1.0 / sqrt(var + eps);
  double ku = ref == Ref::X ? r : (w != 0 ? 1.0 / w : 0.0);  // xhat = u * ku
  double sgx = ku * sgu;
  k.dw = sgx;
  k.db = sg;
  k.A = w * r;
  if (training && M > 0) {
    k.B = ku * (-w * r * sgx / M + 2.0 * gv / (r * M));
    k.C = -w * r * sg / M + gm / M;
  } else {
    k.B = 0;
    k.C = 0;
  }
  if (ref == Ref::X) {
    FwdCoef f = fwd_coef(mean, var, w, b, eps);
    k.c1 = f.scale;
    k.c2 = f.shift;
    k.c3 = mean;
  } else {
    k.c1 = k.c2 = 0;
    k.c3 = b;
  }
  return k;
}

// Running-stat update, as nn.BatchNorm2d does it (unbiased variance).
FASTGAN_HD void update_running(double& rm, double& rv, double mean, double var, double factor, double count) {
  double unbiased = count > 1 ? var * count / (count - 1) : var;
  rm = factor * mean + (1 - factor) * rm;
  rv = factor * unbiased + (1 - factor) * rv;
}

// Class-conditional backward, per channel c: the coefficients of dx = A[n] g + B u + C and the
// per-class gradients, from the per-(n, c) sums sg, sgu (stride C between samples) and labels y.
// Writes A into a[n * C] (n = 0..N-1), B and C into b_out/c_out (per channel, not per sample), and
// adds into dw/db (double, stride C between classes; zeroed by the caller), in the order of n.
template <class Tw, class Ts, class Ta, class Y>
FASTGAN_HD void class_bwd_channel(int64_t c, int64_t N, int64_t C, const Y* y, const Ts* sums, bool training,
                                  double M, double var, const Tw* w, double gm, double gv, double eps, Ta* a,
                                  double& b_out, double& c_out, double* dw, double* db) {
  const double r = 1.0 / sqrt(var + eps);
  double swg = 0, swgu = 0;
  for (int64_t n = 0; n < N; n++) {
    const int64_t k = int64_t(y[n]);
    const double wn = double(w[k * C + c]);
    const double sg = double(sums[(n * C + c) * 2]), sgu = double(sums[(n * C + c) * 2 + 1]);
    swg += wn * sg;
    swgu += wn * sgu;
    a[n * C] = Ta(wn * r);
    dw[k * C] += r * sgu;
    db[k * C] += sg;
  }
  if (training && M > 0) {
    b_out = -r * r * r * swgu / M + 2.0 * gv / M;
    c_out = -r * swg / M + gm / M;
  } else {
    b_out = c_out = 0;
  }
}

}  // namespace batch_norm_act
}  // namespace fastgan

namespace fastgan {
namespace batch_norm_act {

// ---- host-side argument handling shared by the CPU and CUDA entry points ---------------------
// A per-channel tensor: 1-D of length C, on x's device, of x's dtype or of the accumulate type
// (float32 parameters with fp16/bf16 inputs, as under autocast).
inline void check_channel_tensor(const c10::optional<at::Tensor>& t, const at::Tensor& x,
                                 const char* arg, bool allow_any_float = false) {
  if (!t.has_value() || !t->defined()) return;
  check_same_device(*t, x, arg, "x");
  const int64_t C = x.size(1);
  FASTGAN_CHECK_ARG(t->dim() == 1 && t->size(0) == C, arg, "expected a 1-D tensor of length ", C,
                    " (the number of channels, x.shape[1]), got shape ", t->sizes());
  const at::ScalarType acc = at::toOpMathType(x.scalar_type());
  if (allow_any_float) {
    check_floating(*t, arg);
  } else {
    FASTGAN_CHECK_ARG(t->scalar_type() == x.scalar_type() || t->scalar_type() == acc, arg,
                      "expected dtype ", x.scalar_type(), " (the dtype of 'x') or ", acc,
                      ", got ", t->scalar_type());
  }
}

inline void check_x(const at::Tensor& x, const char* arg) {
  check_floating(x, arg);
  FASTGAN_CHECK_ARG(x.dim() == 4, arg, "expected a 4-D tensor (N, C, H, W), got a ", x.dim(),
                    "-D tensor of shape ", x.sizes());
}

inline at::Tensor acc_vec(const c10::optional<at::Tensor>& t, at::ScalarType acc) {
  if (!t.has_value() || !t->defined()) return at::Tensor();
  return t->to(acc).contiguous();
}

// The forward's checks of the statistics arguments (shared by batch_norm_act and its class-conditional
// twin), and the mean/var outputs: empty, or the running statistics' copies in eval.
inline void check_stats_args(const at::Tensor& x, const c10::optional<at::Tensor>& running_mean,
                             const c10::optional<at::Tensor>& running_var, bool training, double eps) {
  check_channel_tensor(running_mean, x, "running_mean");
  check_channel_tensor(running_var, x, "running_var");
  FASTGAN_CHECK_ARG(std::isfinite(eps) && eps >= 0, "eps", "expected a finite number >= 0, got ", eps);
  const bool has_rm = running_mean.has_value() && running_mean->defined();
  const bool has_rv = running_var.has_value() && running_var->defined();
  FASTGAN_CHECK_ARG(training || (has_rm && has_rv), has_rm ? "running_var" : "running_mean",
                    "running_mean and running_var are required when training=False");
  const int64_t C = x.size(1);
  const int64_t M = C ? x.numel() / C : 0;
  FASTGAN_CHECK_ARG(!training || x.numel() == 0 || M > 1, "x",
                    "expected more than 1 value per channel when training, got input of shape ", x.sizes());
}

inline std::pair<at::Tensor, at::Tensor> stats_outputs(const at::Tensor& x,
                                                       const c10::optional<at::Tensor>& running_mean,
                                                       const c10::optional<at::Tensor>& running_var,
                                                       bool training) {
  const at::ScalarType acc = at::toOpMathType(x.scalar_type());
  at::Tensor mean = at::empty({x.size(1)}, x.options().dtype(acc));
  at::Tensor var = at::empty({x.size(1)}, x.options().dtype(acc));
  if (!training) {
    mean.copy_(*running_mean);
    var.copy_(*running_var);
  } else if (x.numel() == 0) {
    mean.zero_();
    var.zero_();
  }
  return {mean, var};
}

// Device-independent entry points. Kernels supplies:
//   forward(xd, layout, training, w, b, mean, var, eps, y, act, alpha)
//       training: writes the batch mean and biased var (acc dtype) into mean/var first;
//       eval: mean/var already hold the running statistics. Then y = act(x * scale + shift).
//   backward(g, refd, layout, mean, var, w, b, gm, gv, training, eps, act, alpha, ref,
//            gx, dw_acc, db_acc)
//   update(rm, rv, mean, var, nbt or undefined, momentum (ignored when nbt is defined: cumulative), count)
template <class Kernels>
std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_impl(
    const at::Tensor& x, const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
    const c10::optional<at::Tensor>& running_mean, const c10::optional<at::Tensor>& running_var,
    bool training, double eps, const std::string& act, double alpha) {
  check_x(x, "x");
  const Act a = parse_act(act);
  check_channel_tensor(weight, x, "weight");
  check_channel_tensor(bias, x, "bias");
  check_stats_args(x, running_mean, running_var, training, eps);
  const at::ScalarType acc = at::toOpMathType(x.scalar_type());
  auto [mean, var] = stats_outputs(x, running_mean, running_var, training);
  at::Tensor xd = make_dense(x);
  at::Tensor y = at::empty_like(xd);
  if (x.numel() > 0) {
    Kernels::forward(xd, channel_layout(xd, 1), training, acc_vec(weight, acc), acc_vec(bias, acc), mean,
                     var, eps, y, a, a == Act::Relu ? 0.0 : alpha);
  }
  return {y, mean, var};
}

template <class Kernels>
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_impl(
    const at::Tensor& grad, const at::Tensor& ref, const at::Tensor& mean, const at::Tensor& var,
    const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
    const c10::optional<at::Tensor>& grad_mean, const c10::optional<at::Tensor>& grad_var,
    bool training, double eps, const std::string& act, double alpha, bool ref_is_output) {
  check_x(ref, "ref");
  check_floating(grad, "grad");
  check_same_device(grad, ref, "grad", "ref");
  check_same_dtype(grad, ref, "grad", "ref");
  FASTGAN_CHECK_ARG(grad.sizes() == ref.sizes(), "grad", "expected shape ", ref.sizes(),
                    " (the shape of 'ref'), got ", grad.sizes());
  const Act a = parse_act(act);
  const double al = a == Act::Relu ? 0.0 : alpha;
  FASTGAN_CHECK_ARG(!ref_is_output || invertible(a, al), "ref_is_output",
                    "the output of act='", act, "' with alpha=", alpha,
                    " cannot be inverted; pass the input x as 'ref' (ref_is_output=False)");
  const at::ScalarType acc = at::toOpMathType(ref.scalar_type());
  check_channel_tensor(mean, ref, "mean", true);
  check_channel_tensor(var, ref, "var", true);
  check_channel_tensor(weight, ref, "weight");
  check_channel_tensor(bias, ref, "bias");
  check_channel_tensor(grad_mean, ref, "grad_mean", true);
  check_channel_tensor(grad_var, ref, "grad_var", true);
  FASTGAN_CHECK_ARG(std::isfinite(eps) && eps >= 0, "eps", "expected a finite number >= 0, got ", eps);
  const int64_t C = ref.size(1);
  at::Tensor refd = make_dense(ref);
  at::Tensor g = match_strides(grad, refd);
  at::Tensor gx = at::empty_like(refd);
  const bool has_w = weight.has_value() && weight->defined();
  at::Tensor dw_acc = at::empty({C}, ref.options().dtype(acc));
  at::Tensor db_acc = at::empty({C}, ref.options().dtype(acc));
  if (ref.numel() == 0) {
    dw_acc.zero_();
    db_acc.zero_();
  } else {
    Kernels::backward(g, refd, channel_layout(refd, 1), mean.to(acc).contiguous(), var.to(acc).contiguous(),
                      acc_vec(weight, acc), acc_vec(bias, acc), acc_vec(grad_mean, acc),
                      acc_vec(grad_var, acc), training, eps, a, al, ref_is_output ? Ref::Y : Ref::X, gx,
                      dw_acc, db_acc);
  }
  at::Tensor dw, db;
  if (has_w) {
    dw = dw_acc.to(weight->scalar_type());
  } else {
    dw = at::empty({0}, ref.options().dtype(acc));
  }
  if (bias.has_value() && bias->defined()) {
    db = db_acc.to(bias->scalar_type());
  } else {
    db = at::empty({0}, ref.options().dtype(acc));
  }
  return {gx, dw, db};
}

template <class Kernels>
void update_impl(at::Tensor& running_mean, at::Tensor& running_var, const at::Tensor& mean,
                 const at::Tensor& var, const c10::optional<at::Tensor>& num_batches_tracked,
                 c10::optional<double> momentum, int64_t count) {
  check_floating(running_mean, "running_mean");
  check_floating(running_var, "running_var");
  const int64_t C = running_mean.numel();
  FASTGAN_CHECK_ARG(running_mean.dim() == 1, "running_mean", "expected a 1-D tensor, got shape ",
                    running_mean.sizes());
  for (auto [t, name] : {std::pair<const at::Tensor*, const char*>{&running_var, "running_var"},
                         {&mean, "mean"}, {&var, "var"}}) {
    check_same_device(*t, running_mean, name, "running_mean");
    FASTGAN_CHECK_ARG(t->dim() == 1 && t->size(0) == C, name, "expected a 1-D tensor of length ", C,
                      " (the length of 'running_mean'), got shape ", t->sizes());
  }
  check_same_dtype(running_var, running_mean, "running_var", "running_mean");
  FASTGAN_CHECK_ARG(running_mean.is_contiguous() && running_var.is_contiguous(), "running_mean",
                    "running statistics must be contiguous");
  FASTGAN_CHECK_ARG(count >= 0, "count", "expected a count >= 0, got ", count);
  at::Tensor nbt;
  if (!momentum.has_value()) {
    FASTGAN_CHECK_ARG(num_batches_tracked.has_value() && num_batches_tracked->defined(),
                      "num_batches_tracked",
                      "momentum=None (a cumulative average) needs the num_batches_tracked counter");
    nbt = *num_batches_tracked;
    check_same_device(nbt, running_mean, "num_batches_tracked", "running_mean");
    FASTGAN_CHECK_ARG(nbt.numel() == 1, "num_batches_tracked", "expected one element, got shape ",
                      nbt.sizes());
  } else {
    FASTGAN_CHECK_ARG(std::isfinite(*momentum), "momentum", "expected a finite number, got ", *momentum);
  }
  if (count == 0 || C == 0) return;  // an empty batch leaves the statistics alone, as in PyTorch
  Kernels::update(running_mean, running_var, mean.contiguous(), var.contiguous(), nbt,
                  momentum.has_value() ? *momentum : 0.0, count);
}

// ---- class_batch_norm_act: host-side checks shared by CPU and CUDA -----------------------------
// x dense with the samples outermost (NCHW or channels_last; anything else is copied to NCHW), so
// that sample n owns elements [n E, (n + 1) E), E = C*H*W.
inline at::Tensor sample_major(const at::Tensor& x) {
  at::Tensor d = make_dense(x);
  const int64_t E = d.numel() / std::max<int64_t>(d.size(0), 1);
  if (d.size(0) > 1 && d.stride(0) != E) d = x.contiguous();
  return d;
}

// Its [A][C][S] layout, with one channel seen as A = N runs of S = H*W (channel_layout would make
// it one run over every sample).
inline ChannelLayout sample_layout(const at::Tensor& d) {
  ChannelLayout l = channel_layout(d, 1);
  if (d.size(1) == 1 && d.numel() > 0) {
    l.A = d.size(0);
    l.S = d.numel() / l.A;
  }
  return l;
}

inline void check_class_inputs(const at::Tensor& x, const at::Tensor& y, const at::Tensor& weight,
                               const at::Tensor& bias) {
  check_x(x, "x");
  check_same_device(y, x, "y", "x");
  FASTGAN_CHECK_ARG(y.scalar_type() == at::kLong && y.dim() == 1 && y.size(0) == x.size(0), "y",
                    "expected a 1-D int64 tensor of ", x.size(0), " class labels (one per sample), got a ",
                    y.scalar_type(), " tensor of shape ", y.sizes());
  const at::ScalarType acc = at::toOpMathType(x.scalar_type());
  for (auto [t, name] : {std::pair<const at::Tensor*, const char*>{&weight, "weight"}, {&bias, "bias"}}) {
    check_same_device(*t, x, name, "x");
    FASTGAN_CHECK_ARG(t->dim() == 2 && t->size(1) == x.size(1) && t->size(0) >= 1, name,
                      "expected a 2-D tensor (num_classes, ", x.size(1), "), got shape ", t->sizes());
    FASTGAN_CHECK_ARG(t->scalar_type() == x.scalar_type() || t->scalar_type() == acc, name, "expected dtype ",
                      x.scalar_type(), " (the dtype of 'x') or ", acc, ", got ", t->scalar_type());
  }
  FASTGAN_CHECK_ARG(bias.size(0) == weight.size(0), "bias", "expected ", weight.size(0),
                    " classes (the rows of 'weight'), got ", bias.size(0));
}

// Labels on the host only when they are already there (no device sync): a CUDA kernel checks them.
inline void check_labels_cpu(const at::Tensor& y, int64_t K) {
  if (!y.device().is_cpu() || y.numel() == 0) return;
  const int64_t lo = y.min().item<int64_t>(), hi = y.max().item<int64_t>();
  FASTGAN_CHECK_ARG(lo >= 0 && hi < K, "y", "expected class labels in [0, ", K, ") (the rows of 'weight'), got [",
                    lo, ", ", hi, "]");
}

// Kernels supplies, beside forward/backward/update:
//   class_forward(xd, layout, training, y, w, b, mean, var, eps, out, act, alpha)
//   class_backward(g, xd, layout, y, mean, var, w, b, gm, gv, training, eps, act, alpha, gx, dw, db)
//       dw, db: (K, C) float64, zeroed.
template <class Kernels>
std::tuple<at::Tensor, at::Tensor, at::Tensor> class_forward_impl(
    const at::Tensor& x, const at::Tensor& y, const at::Tensor& weight, const at::Tensor& bias,
    const c10::optional<at::Tensor>& running_mean, const c10::optional<at::Tensor>& running_var, bool training,
    double eps, const std::string& act, double alpha) {
  check_class_inputs(x, y, weight, bias);
  const Act a = parse_act(act);
  check_stats_args(x, running_mean, running_var, training, eps);
  check_labels_cpu(y, weight.size(0));
  const at::ScalarType acc = at::toOpMathType(x.scalar_type());
  auto [mean, var] = stats_outputs(x, running_mean, running_var, training);
  at::Tensor xd = sample_major(x);
  at::Tensor out = at::empty_like(xd);
  if (x.numel() > 0) {
    Kernels::class_forward(xd, sample_layout(xd), training, y.contiguous(), weight.to(acc).contiguous(),
                           bias.to(acc).contiguous(), mean, var, eps, out, a, a == Act::Relu ? 0.0 : alpha);
  }
  return {out, mean, var};
}

template <class Kernels>
std::tuple<at::Tensor, at::Tensor, at::Tensor> class_backward_impl(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& y, const at::Tensor& mean, const at::Tensor& var,
    const at::Tensor& weight, const at::Tensor& bias, const c10::optional<at::Tensor>& grad_mean,
    const c10::optional<at::Tensor>& grad_var, bool training, double eps, const std::string& act, double alpha) {
  check_class_inputs(x, y, weight, bias);
  check_floating(grad, "grad");
  check_same_device(grad, x, "grad", "x");
  check_same_dtype(grad, x, "grad", "x");
  FASTGAN_CHECK_ARG(grad.sizes() == x.sizes(), "grad", "expected shape ", x.sizes(), " (the shape of 'x'), got ",
                    grad.sizes());
  const Act a = parse_act(act);
  check_channel_tensor(mean, x, "mean", true);
  check_channel_tensor(var, x, "var", true);
  check_channel_tensor(grad_mean, x, "grad_mean", true);
  check_channel_tensor(grad_var, x, "grad_var", true);
  FASTGAN_CHECK_ARG(std::isfinite(eps) && eps >= 0, "eps", "expected a finite number >= 0, got ", eps);
  check_labels_cpu(y, weight.size(0));
  const at::ScalarType acc = at::toOpMathType(x.scalar_type());
  at::Tensor xd = sample_major(x);
  at::Tensor g = match_strides(grad, xd);
  at::Tensor gx = at::empty_like(xd);
  at::Tensor dw = at::zeros(weight.sizes(), x.options().dtype(at::kDouble));
  at::Tensor db = at::zeros(bias.sizes(), x.options().dtype(at::kDouble));
  if (x.numel() > 0) {
    Kernels::class_backward(g, xd, sample_layout(xd), y.contiguous(), mean.to(acc).contiguous(),
                            var.to(acc).contiguous(), weight.to(acc).contiguous(), bias.to(acc).contiguous(),
                            acc_vec(grad_mean, acc), acc_vec(grad_var, acc), training, eps, a,
                            a == Act::Relu ? 0.0 : alpha, gx, dw, db);
  }
  return {gx, dw.to(weight.scalar_type()), db.to(bias.scalar_type())};
}

}  // namespace batch_norm_act
}  // namespace fastgan
