// DiffAugment on the CPU: in parallel over samples; per sample one pass for the mean (in double) and
// one to write (csrc/diff_augment/diff_augment.h has the math).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "diff_augment/diff_augment.h"

namespace fastgan {
namespace diff_augment {
namespace {

template <typename scalar_t>
void run_sample(const scalar_t* src, const Strides& ss, scalar_t* out, const Strides& os, const float* prow,
                const Geometry& g, bool transpose, bool bias, std::vector<acc_t<scalar_t>>& v) {
  using acc = acc_t<scalar_t>;
  const Sample<acc> s = sample_of<acc>(prow);
  // pass 1: the mean of x (forward) or of G^T gy (backward) over the sample
  double total = 0;
  for (int64_t i = 0; i < g.H; i++) {
    acc row = 0;
    for (int64_t j = 0; j < g.W; j++) {
      int64_t si = i, sj = j;
      if (transpose && !source(s, g, true, i, j, si, sj)) continue;
      for (int64_t c = 0; c < g.C; c++) row += acc(src[c * ss.c + si * ss.h + sj * ss.w]);
    }
    total += double(row);
  }
  const acc mean = acc(total / double(g.C * g.H * g.W));
  const acc base = s.kmean * mean + (bias && !transpose ? s.b : acc(0));  // added where a pixel is read
  const acc empty = transpose ? s.kmean * mean : acc(0);                   // where it reads nothing
  const acc inv_c = acc(1) / acc(g.C);
  // pass 2: write
  for (int64_t i = 0; i < g.H; i++) {
    for (int64_t j = 0; j < g.W; j++) {
      scalar_t* o = out + i * os.h + j * os.w;
      int64_t si, sj;
      if (!source(s, g, transpose, i, j, si, sj)) {
        for (int64_t c = 0; c < g.C; c++) o[c * os.c] = scalar_t(empty);
        continue;
      }
      const scalar_t* p = src + si * ss.h + sj * ss.w;
      acc pix = 0;
      for (int64_t c = 0; c < g.C; c++) {
        v[size_t(c)] = acc(p[c * ss.c]);
        pix += v[size_t(c)];
      }
      const acc add = s.kpix * (pix * inv_c) + base;
      for (int64_t c = 0; c < g.C; c++) o[c * os.c] = scalar_t(s.ks * v[size_t(c)] + add);
    }
  }
}

struct CpuKernels {
  static void apply(const at::Tensor& src, const at::Tensor& params, at::Tensor& out, const Geometry& g,
                    bool transpose, bool bias) {
    FASTGAN_DISPATCH_FLOATING(src.scalar_type(), "diff_augment_cpu", [&] {
      using acc = acc_t<scalar_t>;
      const Strides ss = strides_of(src), os = strides_of(out);
      const scalar_t* sp = src.const_data_ptr<scalar_t>();
      scalar_t* op = out.mutable_data_ptr<scalar_t>();
      const float* pp = params.const_data_ptr<float>();
      const int64_t m = g.C * g.H * g.W;
      at::parallel_for(0, g.N, std::max<int64_t>(1, 32768 / std::max<int64_t>(m, 1)), [&](int64_t b, int64_t e) {
        std::vector<acc> v(size_t(g.C));
        for (int64_t n = b; n < e; n++) {
          run_sample(sp + n * ss.n, ss, op + n * os.n, os, pp + n * kParams, g, transpose, bias, v);
        }
      });
    });
  }
};

at::Tensor diff_augment_cpu(const at::Tensor& x, const at::Tensor& params, at::IntArrayRef cutout, bool bias) {
  return apply_impl<CpuKernels>(x, params, cutout, false, bias, "x");
}

at::Tensor diff_augment_backward_cpu(const at::Tensor& grad, const at::Tensor& params, at::IntArrayRef cutout) {
  return apply_impl<CpuKernels>(grad, params, cutout, true, false, "grad");
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, CPU, m) {
  m.impl("diff_augment", &diff_augment_cpu);
  m.impl("diff_augment_backward", &diff_augment_backward_cpu);
}

}  // namespace diff_augment
}  // namespace fastgan
