// Gradient penalties on the CPU: per-sample sums of squares with at::vec, in parallel over samples;
// the per-sample results are added in sample order (deterministic).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "common/vmath.h"
#include "gan_loss/penalty.h"

namespace fastgan {
namespace penalty {
namespace {

using vmath::Vec;
constexpr int kFlush = 64;

template <typename scalar_t>
double sumsq(const scalar_t* p, int64_t m) {
  using acc = acc_t<scalar_t>;
  using V = Vec<acc>;
  constexpr int K = V::size();
  double total = 0;
  V s(0);
  int steps = 0;
  for (int64_t i = 0; i < m; i += K) {
    const int n = int(std::min<int64_t>(K, m - i));
    const V v = vmath::load_as<acc>(p + i, n);  // missing lanes are zero
    s = at::vec::fmadd(v, v, s);
    if (++steps == kFlush) {
      total += vmath::hsum(s);
      s = V(0);
      steps = 0;
    }
  }
  return total + vmath::hsum(s);
}

inline int64_t grain_for(int64_t m) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(m, 1)); }

struct CpuKernels {
  static void forward(const at::Tensor& g, at::Tensor& norms, at::Tensor& pen, double center,
                      double weight, bool squared) {
    FASTGAN_DISPATCH_FLOATING(g.scalar_type(), "grad_penalty_cpu", [&] {
      using acc = acc_t<scalar_t>;
      const int64_t N = g.size(0), M = g.numel() / N;
      const scalar_t* gp = g.const_data_ptr<scalar_t>();
      std::vector<double> sq(static_cast<size_t>(N), 0.0);
      at::parallel_for(0, N, grain_for(M), [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; i++) sq[size_t(i)] = sumsq(gp + i * M, M);
      });
      acc* np = norms.mutable_data_ptr<acc>();
      double total = 0;
      for (int64_t i = 0; i < N; i++) {
        const double n = std::sqrt(sq[size_t(i)]);
        np[i] = acc(n);
        total += squared ? sq[size_t(i)] : (n - center) * (n - center);
      }
      *pen.mutable_data_ptr<acc>() = acc(weight / double(N) * total);
    });
  }

  static void backward(const at::Tensor& grad, const at::Tensor& g, const at::Tensor& norms,
                       at::Tensor& out, double center, double weight, bool squared) {
    FASTGAN_DISPATCH_FLOATING(g.scalar_type(), "grad_penalty_backward_cpu", [&] {
      using acc = acc_t<scalar_t>;
      using V = Vec<acc>;
      constexpr int K = V::size();
      const int64_t N = g.size(0), M = g.numel() / N;
      const scalar_t* gp = g.const_data_ptr<scalar_t>();
      scalar_t* op = out.mutable_data_ptr<scalar_t>();
      const acc* np = norms.const_data_ptr<acc>();
      const double base = 2.0 * weight * double(*grad.const_data_ptr<acc>()) / double(N);
      at::parallel_for(0, N, grain_for(M), [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; i++) {
          const double n = double(np[i]);
          const double s = squared ? base : (n > 0 ? base * (1.0 - center / n) : 0.0);
          const V vs{acc(s)};
          for (int64_t k = 0; k < M; k += K) {
            const int c = int(std::min<int64_t>(K, M - k));
            vmath::store_as(vmath::load_as<acc>(gp + i * M + k, c) * vs, op + i * M + k, c);
          }
        }
      });
    });
  }
};

std::tuple<at::Tensor, at::Tensor> grad_penalty_cpu(const at::Tensor& g, double center, double weight,
                                                    bool squared) {
  return forward_impl<CpuKernels>(g, center, weight, squared);
}

at::Tensor grad_penalty_backward_cpu(const at::Tensor& grad, const at::Tensor& g, const at::Tensor& norms,
                                     double center, double weight, bool squared) {
  return backward_impl<CpuKernels>(grad, g, norms, center, weight, squared);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, CPU, m) {
  m.impl("grad_penalty", &grad_penalty_cpu);
  m.impl("grad_penalty_backward", &grad_penalty_backward_cpu);
}

}  // namespace penalty
}  // namespace fastgan
