// Differentiable augmentation (DiffAugment, Zhao et al. 2020) in one pass each way.
//
// Per sample n of x (N, C, H, W), with the row p = params[n] = (b, s, k, ty, tx, top, left):
//   colour:    u = x + b                                 brightness
//              v_c = s (u_c - mean_c u) + mean_c u       saturation (per pixel, over channels)
//              w = k (v - mean v) + mean v               contrast (mean over the whole sample)
//   geometry:  y[c, i, j] = w[c, i - ty, j - tx]         translation, zero outside the image
//              y[c, i, j] = 0 for top <= i < top + ch and left <= j < left + cw    (cutout)
// Because saturation keeps each pixel's channel mean and mean(u) = mean(x) + b, the colour part is
//   w_c = A x + b = k s x_c + k (1 - s) xbar_pix + (1 - k) xbar + b
// with xbar_pix the pixel's channel mean and xbar the sample mean: one read of x for xbar, one to
// write y. A is symmetric (a sum of scaled averaging projections) and the geometry G is a masked
// shift, so the op is y = G (A x + b) and its gradient is gx = A G^T gy: the same two passes over
// gy, gathering at (i + ty, j + tx) instead. The op is linear in x, so the backward's own backward
// is the forward without b (`bias` false). Parameters are drawn by the caller (fastgan/ops/
// diff_augment.py) and kept for the backward; an identity row is (0, 1, 1, 0, 0, H, 0).
//
// Any strides: x is read and y written through their strides (y is allocated like x, so a
// channels_last x gives a channels_last y).
#pragma once
#include <cstdint>

#include "common/checks.h"
#include "common/dispatch.h"

namespace fastgan {
namespace diff_augment {

constexpr int kParams = 7;

// One sample's parameters, in the accumulate type.
template <typename acc>
struct Sample {
  acc b, ks, kpix, kmean;  // colour: w = ks * x_c + kpix * xbar_pix + kmean * xbar + b
  int64_t ty, tx, top, left;
};

template <typename acc>
FASTGAN_HD Sample<acc> sample_of(const float* p) {
  Sample<acc> s;
  const acc sat = acc(p[1]), con = acc(p[2]);
  s.b = acc(p[0]);
  s.ks = con * sat;
  s.kpix = con * (acc(1) - sat);
  s.kmean = acc(1) - con;
  s.ty = int64_t(p[3]);
  s.tx = int64_t(p[4]);
  s.top = int64_t(p[5]);
  s.left = int64_t(p[6]);
  return s;
}

// Strides of a 4-D tensor, in elements.
struct Strides {
  int64_t n, c, h, w;
};

struct Geometry {
  int64_t N, C, H, W, ch, cw;
};

// Whether the output pixel (i, j) of a sample survives cutout.
template <typename acc>
FASTGAN_HD bool kept(const Sample<acc>& s, const Geometry& g, int64_t i, int64_t j) {
  return !(i >= s.top && i < s.top + g.ch && j >= s.left && j < s.left + g.cw);
}

// Forward (transpose false): the source of output pixel (i, j) is x's (i - ty, j - tx), used when
// inside the image and (i, j) is kept. Backward (transpose true): the source of gx's pixel (i, j) is
// gy's (i + ty, j + tx), used when inside the image and that pixel is kept.
// Returns false when the pixel reads nothing (zeros); else sets (si, sj).
template <typename acc>
FASTGAN_HD bool source(const Sample<acc>& s, const Geometry& g, bool transpose, int64_t i, int64_t j,
                       int64_t& si, int64_t& sj) {
  if (transpose) {
    si = i + s.ty;
    sj = j + s.tx;
    return si >= 0 && si < g.H && sj >= 0 && sj < g.W && kept(s, g, si, sj);
  }
  si = i - s.ty;
  sj = j - s.tx;
  return si >= 0 && si < g.H && sj >= 0 && sj < g.W && kept(s, g, i, j);
}

inline void check_params(const at::Tensor& params, const at::Tensor& x, const char* x_arg) {
  FASTGAN_CHECK_ARG(params.scalar_type() == at::kFloat, "params", "expected float32 parameters, got ",
                    params.scalar_type());
  check_same_device(params, x, "params", x_arg);
  FASTGAN_CHECK_ARG(params.dim() == 2 && params.size(0) == x.size(0) && params.size(1) == kParams, "params",
                    "expected shape (", x.size(0), ", ", kParams, ") (one row per sample of '", x_arg,
                    "'), got ", params.sizes());
}

inline void check_images(const at::Tensor& x, const char* arg) {
  check_floating(x, arg);
  FASTGAN_CHECK_ARG(x.dim() == 4, arg, "expected images (N, C, H, W), got shape ", x.sizes());
}

inline void check_cutout(at::IntArrayRef cutout) {
  FASTGAN_CHECK_ARG(cutout.size() == 2 && cutout[0] >= 0 && cutout[1] >= 0, "cutout",
                    "expected two sizes >= 0 (height, width), got ", cutout);
}

inline Strides strides_of(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

// apply(src, params, out, cutout, transpose, bias): the kernels' contract (see the top of the file).
template <class Kernels>
at::Tensor apply_impl(const at::Tensor& src, const at::Tensor& params, at::IntArrayRef cutout, bool transpose,
                      bool bias, const char* arg) {
  check_images(src, arg);
  check_cutout(cutout);
  check_params(params, src, arg);
  at::Tensor out = at::empty_like(src);  // keeps a dense layout (contiguous or channels_last)
  if (src.numel() == 0) return out;
  const at::Tensor p = params.contiguous();
  Geometry g{src.size(0), src.size(1), src.size(2), src.size(3), cutout[0], cutout[1]};
  Kernels::apply(src, p, out, g, transpose, bias);
  return out;
}

}  // namespace diff_augment
}  // namespace fastgan
