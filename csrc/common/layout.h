// Memory layout of a tensor as seen by a per-channel elementwise kernel.
//
// Any tensor whose strides are non-overlapping and dense (contiguous, channels_last, any
// permutation) is, in memory order, a 3-D array [A][C][S] where C is the size of the channel
// dimension and S its stride: the dims with smaller strides multiply to S and the others to A.
// Kernels therefore walk flat memory and find an element's channel as (offset / S) % C,
// without copying channels_last inputs.
#pragma once
#include <ATen/ATen.h>

namespace fastgan {

struct ChannelLayout {
  int64_t A = 1;  // outer extent
  int64_t C = 1;  // channels
  int64_t S = 1;  // inner extent = stride of the channel dim
};

// A dense version of t (t itself when it already is) so that flat memory covers every element
// once. Its strides are those of at::empty_like(t), which is how outputs are allocated.
inline at::Tensor make_dense(const at::Tensor& t) {
  return t.is_non_overlapping_and_dense() ? t : t.contiguous(t.suggest_memory_format());
}

// dim < 0: no channel dim (every element is channel 0).
inline ChannelLayout channel_layout(const at::Tensor& dense, int64_t dim) {
  ChannelLayout l;
  const int64_t n = dense.numel();
  if (dim < 0 || dense.dim() == 0 || n == 0) {
    l.A = 1;
    l.S = std::max<int64_t>(n, 2);  // S > 1: one run per chunk
    return l;
  }
  l.C = dense.size(dim);
  l.S = dense.size(dim) == 1 ? 1 : dense.stride(dim);
  if (dense.size(dim) == 1) {
    // A size-1 dim may carry any stride; every element is then channel 0.
    l.S = n;
  }
  l.A = n / (l.C * l.S);
  return l;
}

// `like`-shaped tensor with exactly `like`'s strides (dense), in another dtype if asked.
inline at::Tensor empty_with_strides(const at::Tensor& like, at::ScalarType dtype) {
  return at::empty_strided(like.sizes(), like.strides(), like.options().dtype(dtype));
}

// `t` copied, if needed, into exactly `like`'s strides (e.g. an expanded or transposed gradient).
inline at::Tensor match_strides(const at::Tensor& t, const at::Tensor& like) {
  if (t.strides() == like.strides() && t.is_non_overlapping_and_dense()) return t;
  at::Tensor out = empty_with_strides(like, t.scalar_type());
  out.copy_(t);
  return out;
}

}  // namespace fastgan
