// conv_transpose2d_act on the CPU.
//
// Three paths, chosen per shape by measurement (conv_transpose.h, Path):
//   fused    the phase decomposition: the s*s phases of the transposed convolution are one stride-1
//            convolution over phase-packed weights (oneDNN through at::conv2d; for k4 s2 p1 a 2x2
//            convolution with 4*Cout output channels), and one fused pass interleaves the phases
//            into the output while adding the bias, applying the activation, gain and clamp, and
//            writing the backward's mask. oneDNN's deconvolution is much slower than its forward
//            convolution on NCHW tensors, so this path often wins there.
//   aten     at::conv_transpose2d (oneDNN deconvolution, bias included) and the bias_act epilogue,
//            in place where the activation allows it.
//   aten_cl  aten on a channels_last copy of x, for an NCHW result.
#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <torch/library.h>

#include "common/autograd.h"
#include "conv_transpose/conv_transpose.h"

namespace fastgan {
namespace conv_transpose {
namespace {

template <class T>
using Vec = at::vec::Vectorized<T>;

// ---- the fused epilogue over one contiguous run ------------------------------------------------
// src[0..n): pre-activation without bias (type S: the conv dtype or the accumulate type).
// bias: bvec[i] per element when bvec != null, else bconst. Writes y[0..n), mask[0..n) when mask,
// pre[0..n) (the pre-activation without bias, the X-kind ref) when pre.
template <typename scalar_t, Act A, typename S>
inline void epilogue_run(const S* src, int64_t n, const acc_t<scalar_t>* bvec, acc_t<scalar_t> bconst,
                         scalar_t* y, uint8_t* mask, scalar_t* pre, const Params& p) {
  using acc = acc_t<scalar_t>;
  using V = Vec<acc>;
  constexpr int64_t K = V::size();
  constexpr bool kSrcAcc = std::is_same_v<S, acc>, kOutAcc = std::is_same_v<scalar_t, acc>;
  const V valpha(acc(p.alpha)), vgain(acc(p.gain)), vclamp(acc(p.clamp)), vb(bconst);
  const bool has_clamp = p.clamp >= 0;
  alignas(64) acc buf[K];
  for (int64_t i = 0; i < n; i += K) {
    const int m = int(std::min<int64_t>(K, n - i));
    const bool full = m == K;  // full vectors load and store directly (no copy through buf)
    V v;
    if constexpr (kSrcAcc) {
      v = full ? V::loadu(src + i) : V::loadu(src + i, m);
    } else {
      for (int j = 0; j < m; j++) buf[j] = acc(src[i + j]);
      v = V::loadu(buf);
    }
    if (pre) {
      v.store(buf);
      for (int j = 0; j < m; j++) pre[i + j] = scalar_t(buf[j]);
    }
    const V z = v + (bvec ? (full ? V::loadu(bvec + i) : V::loadu(bvec + i, m)) : vb);
    V out = bias_act::act_f<A>(z, valpha) * vgain;
    if (mask) {
      V cls = A == Act::Linear ? V(1) : bias_act::sel(z > V(0), V(1), V(2));
      if (has_clamp) cls = bias_act::sel(out.abs() > vclamp, V(0), cls);
      cls.store(buf);
      for (int j = 0; j < m; j++) mask[i + j] = uint8_t(buf[j]);
    }
    if (has_clamp) out = bias_act::clamp_(out, vclamp);
    if constexpr (kOutAcc) {
      if (full) {
        out.store(y + i);
        continue;
      }
    }
    out.store(buf);
    for (int j = 0; j < m; j++) y[i + j] = scalar_t(buf[j]);
  }
}

// ---- phase packing -----------------------------------------------------------------------------
// wp[(g, qy, qx, co), ci, u, v] = w[g*cin_g + ci, co, ky0[qy] + s*(T-1-u), kx0[qx] + s*(T-1-v)]
// (zero where the tap lies past the kernel): the weight of a stride-1 correlation whose output
// channel block (g, q) is phase q of group g.
template <typename scalar_t>
at::Tensor pack_phase_weight(const at::Tensor& w, const Geometry& g, const PhaseDim& dy, const PhaseDim& dx) {
  const int64_t Qy = dy.s, Qx = dx.s, Ty = dy.T, Tx = dx.T;
  at::Tensor wp = at::empty({g.G * Qy * Qx * g.cout_g, g.cin_g, Ty, Tx}, w.options());
  const at::Tensor wc = w.contiguous();
  const scalar_t* src = wc.const_data_ptr<scalar_t>();
  scalar_t* dst = wp.mutable_data_ptr<scalar_t>();
  const int64_t rows = g.G * Qy * Qx * g.cout_g;
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; r++) {
      const int64_t co = r % g.cout_g, qx = (r / g.cout_g) % Qx, qy = (r / (g.cout_g * Qx)) % Qy;
      const int64_t gi = r / (g.cout_g * Qx * Qy);
      scalar_t* out = dst + r * g.cin_g * Ty * Tx;
      for (int64_t ci = 0; ci < g.cin_g; ci++) {
        const scalar_t* wsrc = src + ((gi * g.cin_g + ci) * g.cout_g + co) * g.KH * g.KW;
        for (int64_t u = 0; u < Ty; u++) {
          const int64_t ky = dy.ky0[qy] + dy.s * (Ty - 1 - u);
          for (int64_t v = 0; v < Tx; v++) {
            const int64_t kx = dx.ky0[qx] + dx.s * (Tx - 1 - v);
            *out++ = (ky < g.KH && kx < g.KW) ? wsrc[ky * g.KW + kx] : scalar_t(0);
          }
        }
      }
    }
  });
  return wp;
}

bool fused_supported(const Geometry& g) {
  return g.d[0] == 1 && g.d[1] == 1 && g.s[0] <= kMaxPhaseStride && g.s[1] <= kMaxPhaseStride;
}

// The fused path: phase convolution, then the interleave + epilogue pass.
void run_fused(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& b,
               const Geometry& g, const Params& p, at::Tensor& y, at::Tensor& mask, at::Tensor& pre) {
  const PhaseDim dy = make_phase_dim(g.H, g.OH, g.KH, g.s[0], g.p[0]);
  const PhaseDim dx = make_phase_dim(g.W, g.OW, g.KW, g.s[1], g.p[1]);
  const bool cl = channels_last_out(x, w);
  const auto fmt = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  at::Tensor wp;
  FASTGAN_DISPATCH_FLOATING(x.scalar_type(), "conv_transpose_pack", [&] {
    wp = pack_phase_weight<scalar_t>(w, g, dy, dx);
  });
  if (cl) wp = wp.contiguous(at::MemoryFormat::ChannelsLast);
  // Phase outputs: (N, G*Qy*Qx*cout_g, Hc, Wc), in the output's memory format.
  at::Tensor ph = at::conv2d(x, wp, {}, {1, 1}, {dy.P, dx.P}, {1, 1}, g.G).contiguous(fmt);
  const int64_t Hc = ph.size(2), Wc = ph.size(3), Q = dy.s * dx.s;
  const int64_t sy = dy.s, sx = dx.s;
  at::Tensor bacc;
  if (b.has_value()) bacc = b->to(at::toOpMathType(x.scalar_type())).contiguous();
  FASTGAN_DISPATCH_FLOATING(x.scalar_type(), "conv_transpose_fused_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const scalar_t* P = ph.const_data_ptr<scalar_t>();
    scalar_t* Y = y.mutable_data_ptr<scalar_t>();
    uint8_t* M = mask.numel() ? mask.mutable_data_ptr<uint8_t>() : nullptr;
    scalar_t* R = pre.numel() ? pre.mutable_data_ptr<scalar_t>() : nullptr;
    const acc* B = bacc.defined() ? bacc.const_data_ptr<acc>() : nullptr;
    FASTGAN_DISPATCH_ACT(p.act, [&] {
      if (cl) {
        // NHWC: channels are contiguous in both the phase outputs and y.
        const int64_t Cp = ph.size(1);
        at::parallel_for(0, g.N * g.OH, 1, [&](int64_t begin, int64_t end) {
          for (int64_t r = begin; r < end; r++) {
            const int64_t n = r / g.OH, oy = r % g.OH, qy = oy % sy, j = oy / sy + dy.off[qy];
            for (int64_t ox = 0; ox < g.OW; ox++) {
              const int64_t qx = ox % sx, i = ox / sx + dx.off[qx];
              const int64_t q = qy * sx + qx;
              const int64_t o = ((n * g.OH + oy) * g.OW + ox) * g.Cout;
              const scalar_t* src = P + ((n * Hc + j) * Wc + i) * Cp;
              for (int64_t gi = 0; gi < g.G; gi++) {
                const int64_t oc = o + gi * g.cout_g;
                epilogue_run<scalar_t, kAct>(src + (gi * Q + q) * g.cout_g, g.cout_g,
                                             B ? B + gi * g.cout_g : nullptr, acc(0), Y + oc,
                                             M ? M + oc : nullptr, R ? R + oc : nullptr, p);
              }
            }
          }
        });
      } else {
        // NCHW: gather one output row from the sx phase rows, then the epilogue on the row.
        at::parallel_for(0, g.N * g.Cout * g.OH, 1, [&](int64_t begin, int64_t end) {
          std::vector<scalar_t> row(g.OW);
          for (int64_t r = begin; r < end; r++) {
            const int64_t oy = r % g.OH, c = (r / g.OH) % g.Cout, n = r / (g.OH * g.Cout);
            const int64_t gi = c / g.cout_g, co = c % g.cout_g, qy = oy % sy, j = oy / sy + dy.off[qy];
            for (int64_t qx = 0; qx < sx; qx++) {
              const int64_t q = qy * sx + qx;
              const scalar_t* src = P + (((n * g.G + gi) * Q + q) * g.cout_g + co) * Hc * Wc + j * Wc +
                                    dx.off[qx];
              for (int64_t i = 0, ox = qx; ox < g.OW; i++, ox += sx) row[ox] = src[i];
            }
            const int64_t o = r * g.OW;
            epilogue_run<scalar_t, kAct>(row.data(), g.OW, nullptr, B ? B[c] : acc(0), Y + o,
                                         M ? M + o : nullptr, R ? R + o : nullptr, p);
          }
        });
      }
    });
  });
}

std::tuple<at::Tensor, at::Tensor> call_fused(const at::Tensor& x, const at::Tensor& w,
                                              const c10::optional<at::Tensor>& b, const Geometry& g,
                                              const Params& p) {
  const auto fmt = out_format(x, w);
  auto opts = x.options().memory_format(fmt);
  at::Tensor y = at::empty({g.N, g.Cout, g.OH, g.OW}, opts);
  at::Tensor mask = p.ref == Ref::Mask ? at::empty({g.N, g.Cout, g.OH, g.OW}, opts.dtype(at::kByte))
                                       : at::empty({0}, x.options().dtype(at::kByte));
  at::Tensor pre = p.ref == Ref::X ? at::empty({g.N, g.Cout, g.OH, g.OW}, opts) : at::empty({0}, x.options());
  run_fused(x, w, b, g, p, y, mask, pre);
  if (p.ref == Ref::Mask) return {y, mask};
  return {y, p.ref == Ref::X ? pre : at::empty({0}, x.options())};
}

std::tuple<at::Tensor, at::Tensor> conv_transpose2d_act_cpu(
    const at::Tensor& x_in, const at::Tensor& w_in, const c10::optional<at::Tensor>& b,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef output_padding, int64_t groups,
    at::IntArrayRef dilation, c10::string_view act_sv, double alpha, double gain, double clamp) {
  const std::string act(act_sv);
  Geometry g = make_geometry(x_in, w_in, b, stride, padding, output_padding, groups, dilation);
  Params p = bias_act::make_params(x_in, 1, act, alpha, gain, clamp, false);
  p.dim = 1;
  // Dense input in its own layout (a channels_last input stays channels_last).
  const at::Tensor x = x_in.is_non_overlapping_and_dense() ? x_in : x_in.contiguous(strictly_channels_last(x_in) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  const at::Tensor& w = w_in;
  if (g.N == 0 || g.Cin == 0 || g.Cout == 0) return run_aten(x, w, b, g, p, act);
  // aten_cl differs from aten only for an NCHW result of an x that is not channels_last already (an
  // N x C x 1 x 1 x is both).
  const bool cl_ok = !channels_last_out(x, w) && !x.is_contiguous(at::MemoryFormat::ChannelsLast);
  // A cached or restored choice runs only where it can: fused needs a supported geometry.
  auto run = [&](Path path) {
    if (path == Path::Fused && fused_supported(g)) return call_fused(x, w, b, g, p);
    return run_aten(x, w, b, g, p, act, path == Path::AtenCl && cl_ok);
  };
  Path path = forced_path();
  if (path == Path::Fused) {
    TORCH_CHECK(fused_supported(g), "fastgan: FASTGAN_CONV_TRANSPOSE_PATH=fused, but the CPU fused path "
                "needs dilation 1 and stride <= ", kMaxPhaseStride, "; got dilation (", g.d[0], ", ", g.d[1],
                ") and stride (", g.s[0], ", ", g.s[1], ")");
    return call_fused(x, w, b, g, p);
  }
  if (path != Path::Auto) return run(path);
  const std::string key = shape_key("cpu", x, w, b.has_value(), g, int(p.ref), act, clamp,
                                    at::get_num_threads());
  auto& cache = PathCache::get();
  if (cache.lookup(key, &path)) return run(path);
  // First call of this shape: time the candidates interleaved, the order alternating (the first round
  // is a warm-up: oneDNN builds its primitives), keep the fastest minimum, and return the result of its
  // last run. Three timed rounds, up to eight while the two fastest are within 10% of each other.
  std::vector<Path> cand{Path::Aten};
  if (fused_supported(g)) cand.push_back(Path::Fused);
  if (cl_ok) cand.push_back(Path::AtenCl);
  if (cand.size() == 1) return run(Path::Aten);
  using clock = std::chrono::steady_clock;
  std::vector<double> t(cand.size(), 1e30);
  std::vector<std::tuple<at::Tensor, at::Tensor>> out(cand.size());
  auto close = [&] {
    std::vector<double> s = t;
    std::sort(s.begin(), s.end());
    return s[1] < 1.1 * s[0];
  };
  for (int rep = 0; rep < 4 || (rep < 9 && close()); rep++) {
    for (size_t i = 0; i < cand.size(); i++) {
      const size_t k = rep % 2 ? cand.size() - 1 - i : i;
      const auto t0 = clock::now();
      out[k] = run(cand[k]);
      if (rep > 0) t[k] = std::min(t[k], std::chrono::duration<double>(clock::now() - t0).count());
    }
  }
  const size_t best = std::min_element(t.begin(), t.end()) - t.begin();
  const auto time_of = [&](Path q) {
    for (size_t i = 0; i < cand.size(); i++) if (cand[i] == q) return t[i];
    return 0.0;
  };
  char note[48] = "";
  if (cl_ok) std::snprintf(note, sizeof note, "(aten_cl %.3f ms)", time_of(Path::AtenCl) * 1e3);
  cache.store(key, cand[best], time_of(Path::Aten), time_of(Path::Fused), note);
  return out[best];
}

// Autocast: conv_transpose2d is a lower-precision op under autocast; x, weight and bias are cast
// to the autocast dtype like ATen's.
std::tuple<at::Tensor, at::Tensor> autocast_impl(c10::DeviceType dev, const at::Tensor& x, const at::Tensor& w,
                                                 const c10::optional<at::Tensor>& b, at::IntArrayRef stride,
                                                 at::IntArrayRef padding, at::IntArrayRef output_padding,
                                                 int64_t groups, at::IntArrayRef dilation, c10::string_view act,
                                                 double alpha, double gain, double clamp) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const auto dtype = at::autocast::get_autocast_dtype(dev);
  auto cast = [&](const at::Tensor& t) { return at::autocast::cached_cast(dtype, t, dev); };
  c10::optional<at::Tensor> bb = b.has_value() ? c10::optional<at::Tensor>(cast(*b)) : c10::nullopt;
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastgan::conv_transpose2d_act", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&,
                           at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, int64_t, at::IntArrayRef,
                           c10::string_view, double, double, double)>();
  return op.call(cast(x), cast(w), bb, stride, padding, output_padding, groups, dilation, act, alpha, gain,
                 clamp);
}

std::tuple<at::Tensor, at::Tensor> autocast_cpu(const at::Tensor& x, const at::Tensor& w,
                                                const c10::optional<at::Tensor>& b, at::IntArrayRef stride,
                                                at::IntArrayRef padding, at::IntArrayRef output_padding,
                                                int64_t groups, at::IntArrayRef dilation, c10::string_view act,
                                                double alpha, double gain, double clamp) {
  return autocast_impl(c10::DeviceType::CPU, x, w, b, stride, padding, output_padding, groups, dilation, act,
                       alpha, gain, clamp);
}

std::tuple<at::Tensor, at::Tensor> autocast_cuda(const at::Tensor& x, const at::Tensor& w,
                                                 const c10::optional<at::Tensor>& b, at::IntArrayRef stride,
                                                 at::IntArrayRef padding, at::IntArrayRef output_padding,
                                                 int64_t groups, at::IntArrayRef dilation, c10::string_view act,
                                                 double alpha, double gain, double clamp) {
  return autocast_impl(c10::DeviceType::CUDA, x, w, b, stride, padding, output_padding, groups, dilation, act,
                       alpha, gain, clamp);
}

// ---- autograd (device independent; this file is compiled in every build) -------------------------
// The backward keeps x, weight and the ref of bias_act's backward (mask, pre-activation or y), never
// relu/lrelu's float pre-activation: g = bias_act_backward(grad_y, ref) (activation derivative + the
// bias gradient's sum), then grad_x, grad_w = convolution_backward(g). Both are called through the
// dispatcher and are differentiable, so second derivatives need nothing more here.
using BiasActBackwardSig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                              const c10::optional<at::Tensor>&, int64_t,
                                                              c10::string_view, double, double, double, bool);

class ConvTransposeActFn : public torch::autograd::Function<ConvTransposeActFn> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w,
                               const c10::optional<at::Tensor>& b, at::IntArrayRef stride, at::IntArrayRef padding,
                               at::IntArrayRef output_padding, int64_t groups, at::IntArrayRef dilation,
                               std::string act, double alpha, double gain, double clamp) {
    at::AutoDispatchBelowADInplaceOrView below;
    static auto op = find_op<std::tuple<at::Tensor, at::Tensor>(
        const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&, at::IntArrayRef, at::IntArrayRef,
        at::IntArrayRef, int64_t, at::IntArrayRef, c10::string_view, double, double, double)>(
        "fastgan::conv_transpose2d_act");
    auto [y, ref] = op.call(x, w, b, stride, padding, output_padding, groups, dilation, act, alpha, gain, clamp);
    const bias_act::Ref kind = bias_act::ref_of(bias_act::parse_act(act), clamp >= 0);
    const at::Tensor saved_ref = kind == bias_act::Ref::Y ? y : kind == bias_act::Ref::None ? at::Tensor() : ref;
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({x, w, kind == bias_act::Ref::X && present(b) ? *b : at::Tensor(), saved_ref});
    auto h = [](at::IntArrayRef v) { return v[0]; };  // int[2] given as one int: both the same
    auto v = [](at::IntArrayRef v) { return v.size() > 1 ? v[1] : v[0]; };
    ctx->saved_data["conv"] = std::vector<int64_t>{h(stride),   v(stride),         h(padding),        v(padding),
                                                   h(dilation), v(dilation),       h(output_padding), v(output_padding),
                                                   groups};
    ctx->saved_data["act"] = act;
    ctx->saved_data["p"] = std::vector<double>{alpha, gain, clamp};
    ctx->saved_data["has_b"] = present(b);
    ctx->saved_data["ref_is_x"] = kind == bias_act::Ref::X;  // ref (the pre-activation) is differentiable
    if (kind != bias_act::Ref::X) ctx->mark_non_differentiable({ref});
    return {y, ref};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list out(12);
    const at::Tensor &gy_in = grads[0], &gref = grads[1];
    const bool ref_is_x = ctx->saved_data["ref_is_x"].toBool();
    if (!gy_in.defined() && !(ref_is_x && gref.defined())) return out;
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &w = saved[1], &b = saved[2], &ref = saved[3];
    const auto c = ctx->saved_data["conv"].toIntVector();
    const auto p = ctx->saved_data["p"].toDoubleVector();
    const bool need_x = ctx->needs_input_grad(0), need_w = ctx->needs_input_grad(1),
               need_b = ctx->saved_data["has_b"].toBool() && ctx->needs_input_grad(2);  // b absent: no index
    const at::Tensor gy = gy_in.defined() ? gy_in : at::zeros_like(gref);
    static auto op = find_op<BiasActBackwardSig>("fastgan::bias_act_backward");
    auto [g, gb] = op.call(gy, ref.defined() ? ref : gy, opt(b), 1, ctx->saved_data["act"].toStringRef(), p[0], p[1],
                           p[2], need_b);
    if (ref_is_x && gref.defined()) g = g + gref;  // second-order terms reaching the pre-activation
    if (need_x || need_w) {
      auto [gx, gw, unused] = at::convolution_backward(g, x, w, c10::nullopt, {c[0], c[1]}, {c[2], c[3]},
                                                       {c[4], c[5]}, true, {c[6], c[7]}, c[8], {need_x, need_w, false});
      if (need_x) out[0] = gx;
      if (need_w) out[1] = gw;
    }
    if (need_b) out[2] = gb;
    return out;
  }
};

std::tuple<at::Tensor, at::Tensor> conv_transpose2d_act_autograd(
    const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& b, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef output_padding, int64_t groups, at::IntArrayRef dilation,
    c10::string_view act, double alpha, double gain, double clamp) {
  auto o = ConvTransposeActFn::apply(x, w, b, stride, padding, output_padding, groups, dilation, std::string(act),
                                     alpha, gain, clamp);
  return {o[0], o[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, Autograd, m) { m.impl("conv_transpose2d_act", &conv_transpose2d_act_autograd); }

TORCH_LIBRARY_IMPL(fastgan, CPU, m) { m.impl("conv_transpose2d_act", &conv_transpose2d_act_cpu); }
TORCH_LIBRARY_IMPL(fastgan, AutocastCPU, m) { m.impl("conv_transpose2d_act", &autocast_cpu); }
TORCH_LIBRARY_IMPL(fastgan, AutocastCUDA, m) { m.impl("conv_transpose2d_act", &autocast_cuda); }

}  // namespace conv_transpose
}  // namespace fastgan
