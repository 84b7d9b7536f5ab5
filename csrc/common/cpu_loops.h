// CPU helpers for per-channel loops over [A][C][S] memory (see layout.h): runs of elements that
// share a channel or step through consecutive channels, and Vectorized<acc_t> loads/stores that
// widen fp16/bf16 to float. CPU translation units only.
#pragma once
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <type_traits>

#include "common/dispatch.h"
#include "common/layout.h"

namespace fastgan {
namespace cpu {

// f(m, len, c, cstep): memory [m, m + len) holds channels c + i * cstep (cstep 0: all channel c,
// the S > 1 case; cstep 1: consecutive channels, the S == 1 case, e.g. channels_last).
template <class F>
inline void for_each_run(const ChannelLayout& l, int64_t begin, int64_t end, F&& f) {
  int64_t m = begin;
  if (l.S == 1) {
    int64_t c = m % l.C;
    while (m < end) {
      const int64_t len = std::min(l.C - c, end - m);
      f(m, len, c, int64_t(1));
      m += len;
      c = 0;
    }
  } else {
    int64_t s = m % l.S, c = (m / l.S) % l.C;
    while (m < end) {
      const int64_t len = std::min(l.S - s, end - m);
      f(m, len, c, int64_t(0));
      m += len;
      s = 0;
      if (++c == l.C) c = 0;
    }
  }
}

// n (<= V::size()) elements of scalar_t as one Vectorized<acc_t<scalar_t>>; lanes past n are 0.
template <class scalar_t>
struct VecIO {
  using acc = acc_t<scalar_t>;
  using V = at::vec::Vectorized<acc>;
  static constexpr int K = V::size();

  static inline V load(const scalar_t* p, int n) {
    if constexpr (std::is_same_v<scalar_t, acc>) {
      return n == K ? V::loadu(p) : V::loadu(p, n);
    } else {
      if (n == K) {
        V out;
        at::vec::load_to_float<scalar_t>(p, out);
        return out;
      }
      alignas(64) acc buf[K] = {};
      for (int j = 0; j < n; j++) buf[j] = acc(p[j]);
      return V::loadu(buf);
    }
  }

  static inline void store(scalar_t* p, const V& v, int n) {
    if constexpr (std::is_same_v<scalar_t, acc>) {
      v.store(p, n);
    } else {
      at::vec::convert_from_float<scalar_t>(v, v).store(p, n);
    }
  }

  // per-channel acc array: a broadcast of arr[c] (cstep 0) or arr[c .. c + n) (cstep 1)
  static inline V channel(const acc* arr, int64_t c, int64_t i, int64_t cstep, int n) {
    return cstep ? V::loadu(arr + c + i, n) : V(arr[c]);
  }
};

}  // namespace cpu
}  // namespace fastgan
