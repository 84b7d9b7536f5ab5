// conv_transpose2d_act: y = clamp(act(conv_transpose2d(x, w) + b) * gain, -clamp, clamp).
//
// Shared by the CPU and CUDA files: argument checks (with nn.ConvTranspose2d's wording), the output
// geometry, the phase decomposition, and the per-shape path cache.
//
// Phase decomposition. Output row oy = py + s*j (py = oy mod s, the phase) receives the kernel rows
// ky = ky0 + s*t, ky0 = (py + p) mod s, from input rows iy = j + c - t, c = (py + p - ky0) / s
// (dilation 1). Every phase is therefore a dense stride-1 convolution with T = ceil(k / s) taps per
// dim (taps past k are zero), and the s*s phases interleave into the output: no multiply touches
// an inserted zero. For k4 s2 p1 (DCGAN) every phase is a 2x2 convolution.
//
// Outputs of the op: (y, ref). ref is what the backward reads (see bias_act.h): the uint8 mask for
// relu/lrelu/clamped linear, the pre-activation without bias for softplus/swish/gelu, and an empty
// tensor otherwise (tanh/sigmoid/elu/selu read y; linear reads nothing).
#pragma once
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

#include "bias_act/bias_act.h"
#include "common/checks.h"

namespace fastgan {
namespace conv_transpose {

using bias_act::Act;
using bias_act::Params;
using bias_act::Ref;

struct Geometry {
  int64_t N, Cin, H, W;   // input
  int64_t Cout, OH, OW;   // output
  int64_t KH, KW, G, cin_g, cout_g;
  int64_t s[2], p[2], op[2], d[2];
};

inline std::vector<int64_t> pair_arg(at::IntArrayRef v, const char* arg) {
  FASTGAN_CHECK_ARG(v.size() == 1 || v.size() == 2, arg, "expected 1 or 2 values, got ", v.size());
  return {v[0], v.size() == 2 ? v[1] : v[0]};
}

// Checks every argument as nn.ConvTranspose2d would, naming the argument.
inline Geometry make_geometry(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& b,
                              at::IntArrayRef stride, at::IntArrayRef padding,
                              at::IntArrayRef output_padding, int64_t groups, at::IntArrayRef dilation) {
  FASTGAN_CHECK_ARG(x.dim() == 4, "x", "expected 3D (unbatched) or 4D (batched) input to "
                    "conv_transpose2d, but got input of size: ", x.sizes());
  check_floating(x, "x");
  FASTGAN_CHECK_ARG(w.dim() == 4, "weight", "expected a 4-D weight (in_channels, out_channels / groups, "
                    "kH, kW), got size ", w.sizes());
  check_same_device(w, x, "weight", "x");
  check_same_dtype(w, x, "weight", "x");
  FASTGAN_CHECK_ARG(groups > 0, "groups", "non-positive groups is not supported, got ", groups);
  auto s = pair_arg(stride, "stride"), p = pair_arg(padding, "padding");
  auto op = pair_arg(output_padding, "output_padding"), d = pair_arg(dilation, "dilation");
  Geometry g;
  for (int i = 0; i < 2; i++) {
    FASTGAN_CHECK_ARG(s[i] > 0, "stride", "non-positive stride is not supported, got ", stride);
    FASTGAN_CHECK_ARG(p[i] >= 0, "padding", "negative padding is not supported, got ", padding);
    FASTGAN_CHECK_ARG(d[i] > 0, "dilation", "dilation should be greater than zero, got ", dilation);
    FASTGAN_CHECK_ARG(op[i] >= 0, "output_padding", "negative output_padding is not supported, got ",
                      output_padding);
    FASTGAN_CHECK_ARG(op[i] < s[i] || op[i] < d[i], "output_padding",
                      "output padding must be smaller than either stride or dilation, but got "
                      "output_padding=", output_padding, ", stride=", stride, ", dilation=", dilation);
    g.s[i] = s[i];
    g.p[i] = p[i];
    g.op[i] = op[i];
    g.d[i] = d[i];
  }
  g.N = x.size(0);
  g.Cin = x.size(1);
  g.H = x.size(2);
  g.W = x.size(3);
  g.G = groups;
  FASTGAN_CHECK_ARG(w.size(0) % groups == 0, "weight", "Given groups=", groups,
                    ", expected weight to be divisible by ", groups, " at dimension 0, but got weight of "
                    "size ", w.sizes(), " instead");
  FASTGAN_CHECK_ARG(w.size(0) == g.Cin, "x", "Given transposed=1, weight of size ", w.sizes(),
                    ", expected input", x.sizes(), " to have ", w.size(0), " channels, but got ", g.Cin,
                    " channels instead");
  g.KH = w.size(2);
  g.KW = w.size(3);
  FASTGAN_CHECK_ARG(g.KH > 0 && g.KW > 0, "weight", "expected a non-empty kernel, got weight of size ",
                    w.sizes());
  g.cin_g = g.Cin / groups;
  g.cout_g = w.size(1);
  g.Cout = g.cout_g * groups;
  g.OH = (g.H - 1) * g.s[0] - 2 * g.p[0] + g.d[0] * (g.KH - 1) + g.op[0] + 1;
  g.OW = (g.W - 1) * g.s[1] - 2 * g.p[1] + g.d[1] * (g.KW - 1) + g.op[1] + 1;
  FASTGAN_CHECK_ARG(g.OH > 0 && g.OW > 0 && g.H > 0 && g.W > 0, "x", "Given input size per channel: (",
                    g.H, " x ", g.W, "). Calculated output size per channel: (", g.OH, " x ", g.OW,
                    "). Output size is too small");
  if (b.has_value()) {
    check_same_device(*b, x, "bias", "x");
    check_same_dtype(*b, x, "bias", "x");
    FASTGAN_CHECK_ARG(b->dim() == 1 && b->size(0) == g.Cout, "bias", "expected a 1-D tensor of length ",
                      g.Cout, " (weight.shape[1] * groups), got shape ", b->sizes());
  }
  return g;
}

// The output (and ref) layout: channels_last exactly when x or the weight is channels_last and
// not also contiguous, as ATen's convolutions decide (the same rule is in
// fastgan/ops/conv_transpose.py's fake kernel).
inline bool strictly_channels_last(const at::Tensor& t) {
  return t.dim() == 4 && !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

inline bool channels_last_out(const at::Tensor& x, const at::Tensor& w) {
  return strictly_channels_last(x) || strictly_channels_last(w);
}

inline at::MemoryFormat out_format(const at::Tensor& x, const at::Tensor& w) {
  return channels_last_out(x, w) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// t with exactly the strides at::empty(t.sizes(), memory_format=fmt) gives (what the fake kernel
// promises), copied only when they differ.
inline at::Tensor to_layout(const at::Tensor& t, at::MemoryFormat fmt) {
  const at::Tensor ref = at::empty(t.sizes(), t.options().device(at::kMeta).memory_format(fmt));
  if (t.strides() == ref.strides()) return t;
  at::Tensor out = at::empty(t.sizes(), t.options().memory_format(fmt));
  out.copy_(t);
  return out;
}

// ---- the aten path ----------------------------------------------------------------------------
// The namespace whose bias_act the aten path calls: the SIMT build calls its own, emulated one.
#ifndef FASTGAN_OP_NAMESPACE
#define FASTGAN_OP_NAMESPACE "fastgan"
#endif

using BiasActFn = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const c10::optional<at::Tensor>&,
                                                      int64_t, c10::string_view, double, double, double);
using BiasActInplaceFn = at::Tensor(at::Tensor&, const c10::optional<at::Tensor>&, int64_t,
                                    c10::string_view, double, double, double);

// Whether the CPU's oneDNN has native bfloat16 / float16 (AVX-512 BF16 / FP16, AMX): asked once
// through torch's own ops (mkldnn::_is_mkldnn_bf16_supported / _fp16_), false if they are absent.
inline bool cpu_native_half(at::ScalarType t) {
  static const auto ask = [](const char* name) {
    auto h = c10::Dispatcher::singleton().findSchema({name, ""});
    return h.has_value() && h->typed<bool()>().call();
  };
  static const bool bf16 = ask("mkldnn::_is_mkldnn_bf16_supported");
  static const bool fp16 = ask("mkldnn::_is_mkldnn_fp16_supported");
  return t == at::kBFloat16 ? bf16 : t == at::kHalf ? fp16 : true;
}

// ATen's transposed convolution and the bias_act ops as the epilogue; returns (y, ref).
// On a CPU without native bf16/fp16, oneDNN's reduced-precision deconvolution is both inexact (1.3%
// error on 800-term sums, against 0.2% for one rounding of the float32 result) and slower than float32
// (2.3-2.8x, measured on the 2-core AVX2 build machine): there it runs in float32 and rounds once.
// via_cl: the convolution runs on a channels_last copy of x (the aten_cl path, see Path); the result
// still has the layout out_format(x, w) promises.
inline std::tuple<at::Tensor, at::Tensor> run_aten(const at::Tensor& x, const at::Tensor& w,
                                                   const c10::optional<at::Tensor>& b, const Geometry& g,
                                                   const Params& p, const std::string& act, bool via_cl = false) {
  const bool x_kind = p.ref == Ref::X;
  const bool up = x.is_cpu() && !cpu_native_half(x.scalar_type());
  c10::optional<at::Tensor> bias = x_kind ? c10::optional<at::Tensor>() : b;
  if (up && bias.has_value()) bias = bias->to(at::kFloat);
  const at::Tensor xin = up || via_cl ? x.to(up ? at::kFloat : x.scalar_type(), false, false,
                                             via_cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Preserve)
                                      : x;
  at::Tensor conv = at::conv_transpose2d(xin, up ? w.to(at::kFloat) : w, bias,
                                         {g.s[0], g.s[1]}, {g.p[0], g.p[1]}, {g.op[0], g.op[1]}, g.G,
                                         {g.d[0], g.d[1]});
  conv = to_layout(up ? conv.to(x.scalar_type()) : conv, out_format(x, w));
  const at::Tensor empty = at::empty({0}, x.options().dtype(x.scalar_type()));
  if (p.ref == Ref::None && p.gain == 1.0 && p.clamp < 0) return {conv, empty};  // plain linear
  if (p.ref == Ref::Mask || p.ref == Ref::None) {
    static auto op =
        c10::Dispatcher::singleton().findSchemaOrThrow(FASTGAN_OP_NAMESPACE "::bias_act_", "").typed<BiasActInplaceFn>();
    at::Tensor mask = op.call(conv, c10::nullopt, 1, act, p.alpha, p.gain, p.clamp);
    return {conv, p.ref == Ref::Mask ? mask : empty};
  }
  static auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow(FASTGAN_OP_NAMESPACE "::bias_act", "").typed<BiasActFn>();
  at::Tensor y = std::get<0>(op.call(conv, x_kind ? b : c10::nullopt, 1, act, p.alpha, p.gain, p.clamp));
  return {y, x_kind ? conv : empty};
}

// ---- phase plan (dilation 1) -----------------------------------------------------------------
// Per spatial dim: T taps per phase, and for every phase r in [0, s): ky0 (first kernel row), the
// phase's output extent, and `off` such that the phase's output j reads input rows j + off - P + u
// (u = 0..T-1) of a stride-1 correlation over the input padded by P on both sides, i.e. output j
// of the phase is element j + off of that correlation's output.
struct PhaseDim {
  int64_t s, T, P;
  int64_t ky0[16], c[16], len[16], off[16];
};

constexpr int64_t kMaxPhaseStride = 16;

inline PhaseDim make_phase_dim(int64_t in, int64_t out, int64_t k, int64_t s, int64_t p) {
  PhaseDim d;
  d.s = s;
  d.T = (k + s - 1) / s;
  int64_t P = std::max<int64_t>(0, (d.T - in + 1) / 2);
  int64_t nominal[kMaxPhaseStride];
  for (int64_t r = 0; r < s; r++) {
    d.ky0[r] = (r + p) % s;
    const int64_t c = (r + p - d.ky0[r]) / s;
    d.c[r] = c;
    d.len[r] = r < out ? (out - r + s - 1) / s : 0;
    nominal[r] = c - (d.T - 1);  // input row of tap u = 0 for phase output j = 0
    if (d.len[r] > 0) {
      P = std::max(P, -nominal[r]);
      P = std::max(P, d.len[r] - 1 + nominal[r] - (in - d.T));
    }
  }
  d.P = P;
  for (int64_t r = 0; r < s; r++) d.off[r] = nominal[r] + P;
  return d;
}

// ---- path choice ----------------------------------------------------------------------------
// "aten": ATen's transposed convolution (oneDNN on the CPU, cuDNN on CUDA) and then the bias_act
// epilogue. "fused": fastgan's phase decomposition with the epilogue fused (CPU: one stride-1
// ATen convolution over phase-packed weights + a fused interleave/bias/activation pass; CUDA: the
// tensor-core implicit-GEMM kernel). "aten_cl": below. FASTGAN_CONV_TRANSPOSE_PATH=auto|aten|aten_cl|fused
// chooses; auto (the default) measures the candidates at the first call of each shape and caches the
// fastest.
enum class Path : int { Auto = 0, Aten = 1, Fused = 2, AtenCl = 3 };

// aten_cl (CPU, NCHW result only): the aten path with x copied to channels_last, so that oneDNN runs its
// channels_last deconvolution, which skips the copy its NCHW one makes of its output; the result is
// copied back to NCHW before the epilogue. It wins at some shapes (about 1.2x the aten forward at
// 16x128x16x16 -> 64 and 64x64x8x8 -> 32 on the AVX2 build machine) and ties or loses at others, so
// it is one more measured candidate. The backward is the same for every path (NCHW). On CUDA it is
// the aten path.
inline const char* path_name(Path p) {
  return p == Path::Fused ? "fused" : p == Path::AtenCl ? "aten_cl" : p == Path::Aten ? "aten" : "auto";
}

// "aten", "fused" or "aten_cl" (what conv_transpose_paths() reports); Auto for anything else.
inline Path parse_path(const std::string& v) {
  return v == "aten" ? Path::Aten : v == "fused" ? Path::Fused : v == "aten_cl" ? Path::AtenCl : Path::Auto;
}

inline Path forced_path() {
  const char* e = std::getenv("FASTGAN_CONV_TRANSPOSE_PATH");
  if (e == nullptr || e[0] == 0 || std::string(e) == "auto") return Path::Auto;
  const std::string v(e);
  const Path p = parse_path(v);
  TORCH_CHECK(p != Path::Auto, "fastgan: environment variable FASTGAN_CONV_TRANSPOSE_PATH must be auto, aten, "
              "aten_cl or fused, got '", v, "'");
  return p;
}

// FASTGAN_VERBOSE=1 (every measured choice fastgan makes) or FASTGAN_CONV_TRANSPOSE_VERBOSE=1.
inline bool verbose() {
  for (const char* name : {"FASTGAN_VERBOSE", "FASTGAN_CONV_TRANSPOSE_VERBOSE"}) {
    const char* e = std::getenv(name);
    if (e != nullptr && e[0] == '1') return true;
  }
  return false;
}

inline std::string shape_key(const char* dev, const at::Tensor& x, const at::Tensor& w, bool has_bias,
                             const Geometry& g, int ref_kind, const std::string& act, double clamp,
                             int extra) {
  std::ostringstream k;
  k << dev << ' ' << x.scalar_type() << ' ' << x.sizes() << (strictly_channels_last(x) ? " xcl " : " x ")
    << (channels_last_out(x, w) ? "cl " : "nchw ")
    << w.sizes() << ' ' << has_bias << " s" << g.s[0] << ',' << g.s[1] << " p" << g.p[0] << ','
    << g.p[1] << " op" << g.op[0] << ',' << g.op[1] << " d" << g.d[0] << ',' << g.d[1] << " g" << g.G
    << ' ' << act << " r" << ref_kind << " c" << (clamp >= 0) << " e" << extra;
  return k.str();
}

// Process-wide cache: shape key -> chosen path, with the timings that chose it (`fastgan selftest`
// and fastgan._C.conv_transpose_paths() report them).
struct PathChoice {
  Path path;
  double t_aten, t_fused;  // seconds; 0 when not timed
  std::string note;
};

class PathCache {
 public:
  static PathCache& get() {
    static PathCache c;
    return c;
  }
  bool lookup(const std::string& key, Path* out) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = map_.find(key);
    if (it == map_.end()) return false;
    *out = it->second.path;
    return true;
  }
  void store(const std::string& key, Path p, double t_aten, double t_fused, const char* note) {
    std::lock_guard<std::mutex> lock(mu_);
    map_[key] = PathChoice{p, t_aten, t_fused, note};
    if (verbose()) {
      std::fprintf(stderr, "fastgan conv_transpose2d_act: %s -> %s (aten %.3f ms, fused %.3f ms)%s%s\n",
                   key.c_str(), path_name(p), t_aten * 1e3, t_fused * 1e3,
                   note[0] ? " " : "", note);
    }
  }
  std::vector<std::pair<std::string, PathChoice>> entries() {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<std::pair<std::string, PathChoice>> out(map_.begin(), map_.end());
    std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    return out;
  }
  void clear() {
    std::lock_guard<std::mutex> lock(mu_);
    map_.clear();
  }

 private:
  std::mutex mu_;
  std::unordered_map<std::string, PathChoice> map_;
};

}  // namespace conv_transpose
}  // namespace fastgan
