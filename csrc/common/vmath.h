// Elementary functions with one spelling for scalars (host and device) and, on the CPU,
// at::vec::Vectorized, so that an op's math can be written once as a template over the value type.
#pragma once
#include <cmath>

#include "common/dispatch.h"

#if !defined(__CUDACC__)
#include <ATen/cpu/vec/vec.h>
#endif

namespace fastgan {
namespace vmath {

template <class T> FASTGAN_HD T sel(bool c, T a, T b) { return c ? a : b; }
FASTGAN_HD float exp_(float x) { return ::expf(x); }
FASTGAN_HD double exp_(double x) { return ::exp(x); }
FASTGAN_HD float log1p_(float x) { return ::log1pf(x); }
FASTGAN_HD double log1p_(double x) { return ::log1p(x); }
// log(1 + x) for x in [0, 1]; scalars use the library's log1p (fast on GPUs).
FASTGAN_HD float log1p_unit(float x) { return ::log1pf(x); }
FASTGAN_HD double log1p_unit(double x) { return ::log1p(x); }
FASTGAN_HD float abs_(float x) { return ::fabsf(x); }
FASTGAN_HD double abs_(double x) { return ::fabs(x); }
FASTGAN_HD float sqrt_(float x) { return ::sqrtf(x); }
FASTGAN_HD double sqrt_(double x) { return ::sqrt(x); }
FASTGAN_HD float expm1_(float x) { return ::expm1f(x); }
FASTGAN_HD double expm1_(double x) { return ::expm1(x); }
FASTGAN_HD float tanh_(float x) { return ::tanhf(x); }
FASTGAN_HD double tanh_(double x) { return ::tanh(x); }
FASTGAN_HD float erf_(float x) { return ::erff(x); }
FASTGAN_HD double erf_(double x) { return ::erf(x); }

#if !defined(__CUDACC__)
template <class T> using Vec = at::vec::Vectorized<T>;
// c is a comparison result (all-ones lanes where true).
template <class T> inline Vec<T> sel(const Vec<T>& c, const Vec<T>& a, const Vec<T>& b) {
  return Vec<T>::blendv(b, a, c);
}
template <class T> inline Vec<T> exp_(const Vec<T>& x) { return x.exp(); }
template <class T> inline Vec<T> log1p_(const Vec<T>& x) { return x.log1p(); }
// log(1 + x) for x in [0, 1] (e.g. x = e^-|z| in a softplus): 2 atanh(t), t = x / (2 + x) <= 1/3,
// by its odd series to below one ulp. Sleef's vector log1p (and log) cost ~8x its exp.
template <class T> inline Vec<T> log1p_unit(const Vec<T>& x) {
  constexpr int K = std::is_same_v<T, float> ? 8 : 17;  // terms t^(2k+1) / (2k+1), k < K
  const Vec<T> t = x / (Vec<T>(2) + x);
  const Vec<T> t2 = t * t;
  Vec<T> p(T(1) / T(2 * K - 1));
  for (int k = K - 2; k >= 0; k--) p = at::vec::fmadd(p, t2, Vec<T>(T(1) / T(2 * k + 1)));
  return Vec<T>(2) * t * p;
}
template <class T> inline Vec<T> abs_(const Vec<T>& x) { return x.abs(); }
template <class T> inline Vec<T> sqrt_(const Vec<T>& x) { return x.sqrt(); }
template <class T> inline Vec<T> expm1_(const Vec<T>& x) { return x.expm1(); }
template <class T> inline Vec<T> tanh_(const Vec<T>& x) { return x.tanh(); }
template <class T> inline Vec<T> erf_(const Vec<T>& x) { return x.erf(); }

// Sum of the first n lanes (n <= size), in lane order, in double: deterministic.
template <class T> inline double hsum(const Vec<T>& v, int n = Vec<T>::size()) {
  alignas(64) T buf[Vec<T>::size()];
  v.store(buf);
  double s = 0;
  for (int j = 0; j < n; j++) s += double(buf[j]);
  return s;
}

// Load n <= size elements of any floating type as a Vectorized<acc> (missing lanes are zero).
template <class acc, class scalar_t>
inline Vec<acc> load_as(const scalar_t* p, int n) {
  if constexpr (std::is_same_v<acc, scalar_t>) {
    return n == Vec<acc>::size() ? Vec<acc>::loadu(p) : Vec<acc>::loadu(p, n);
  } else {
    alignas(64) acc buf[Vec<acc>::size()];
    for (int j = 0; j < n; j++) buf[j] = acc(p[j]);
    return Vec<acc>::loadu(buf, n);
  }
}

// Store the first n lanes of v to p, converting to scalar_t.
template <class scalar_t, class acc>
inline void store_as(const Vec<acc>& v, scalar_t* p, int n) {
  if constexpr (std::is_same_v<acc, scalar_t>) {
    if (n == Vec<acc>::size()) v.store(p); else v.store(p, n);
  } else {
    alignas(64) acc buf[Vec<acc>::size()];
    v.store(buf);
    for (int j = 0; j < n; j++) p[j] = scalar_t(buf[j]);
  }
}
#endif

}  // namespace vmath
}  // namespace fastgan
