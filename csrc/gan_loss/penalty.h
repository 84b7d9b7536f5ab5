// Gradient penalties from the gradient tensor g = dD/dx (N samples first):
//   squared (R1):     P = weight / N * sum_i ||g_i||^2
//   norm   (WGAN-GP): P = weight / N * sum_i (||g_i|| - center)^2
// with per-sample norms over all non-batch dims, accumulated in fp32 (fp64 for double).
// Backward: dP/dg_ik = s_i * g_ik, s_i = 2 * weight * grad / N * (squared ? 1 : 1 - center / ||g_i||),
// and 0 for a sample whose gradient is exactly zero in the norm form (as torch's norm backward).
//
// Each sample must be one contiguous block of M = numel / N elements in memory; contiguous and
// channels_last tensors are (the usual layouts of a gradient w.r.t. images), others are copied.
#pragma once
#include <cmath>

#include "common/checks.h"
#include "common/dispatch.h"

namespace fastgan {
namespace penalty {

inline bool sample_blocked(const at::Tensor& g) {
  if (g.is_contiguous()) return true;
  if (g.dim() == 4 && g.is_contiguous(at::MemoryFormat::ChannelsLast)) return true;
  if (g.dim() == 5 && g.is_contiguous(at::MemoryFormat::ChannelsLast3d)) return true;
  return false;
}

inline at::Tensor blocked(const at::Tensor& g) { return sample_blocked(g) ? g : g.contiguous(); }

inline void check_grad_tensor(const at::Tensor& g, const char* arg) {
  check_floating(g, arg);
  FASTGAN_CHECK_ARG(g.dim() >= 1 && g.size(0) > 0, arg,
                    "expected a gradient with a non-empty batch dimension first, got shape ", g.sizes());
}

inline void check_scalars(double center, double weight) {
  FASTGAN_CHECK_ARG(std::isfinite(center), "center", "expected a finite number, got ", center);
  FASTGAN_CHECK_ARG(std::isfinite(weight), "weight", "expected a finite number, got ", weight);
}

// forward(gd, norms, penalty, center, weight, squared): norms (N,) and penalty () in acc dtype.
template <class Kernels>
std::tuple<at::Tensor, at::Tensor> forward_impl(const at::Tensor& g, double center, double weight,
                                                bool squared) {
  check_grad_tensor(g, "g");
  check_scalars(center, weight);
  const at::Tensor gd = blocked(g);
  const auto acc = at::toOpMathType(g.scalar_type());
  at::Tensor norms = at::empty({g.size(0)}, g.options().dtype(acc));
  at::Tensor pen = at::empty({}, g.options().dtype(acc));
  Kernels::forward(gd, norms, pen, center, weight, squared);
  return {pen, norms};
}

// backward(grad (0-dim, acc dtype), gd, norms, out, center, weight, squared)
template <class Kernels>
at::Tensor backward_impl(const at::Tensor& grad, const at::Tensor& g, const at::Tensor& norms,
                         double center, double weight, bool squared) {
  check_floating(grad, "grad");
  FASTGAN_CHECK_ARG(grad.numel() == 1, "grad", "expected the gradient of a scalar penalty (one "
                    "element), got shape ", grad.sizes());
  check_grad_tensor(g, "g");
  check_floating(norms, "norms");
  check_scalars(center, weight);
  check_same_device(g, grad, "g", "grad");
  check_same_device(norms, grad, "norms", "grad");
  const auto acc = at::toOpMathType(g.scalar_type());
  FASTGAN_CHECK_ARG(norms.dim() == 1 && norms.size(0) == g.size(0) && norms.scalar_type() == acc,
                    "norms", "expected the per-sample norms returned by grad_penalty (shape (",
                    g.size(0), ",), dtype ", acc, "), got shape ", norms.sizes(), " and dtype ",
                    norms.scalar_type());
  const at::Tensor gd = blocked(g);
  at::Tensor out = at::empty_like(gd);
  if (gd.numel() > 0) {
    Kernels::backward(grad.to(acc).reshape({}), gd, norms.contiguous(), out, center, weight, squared);
  }
  return out;
}

}  // namespace penalty
}  // namespace fastgan
