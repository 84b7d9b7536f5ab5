// nvcuda::wmma for the SIMT emulator (shadows the toolkit's <mma.h> in the SIMT build).
//
// Which fragment element a lane holds is unspecified in CUDA. The emulator picks one of two
// mappings at run time (simt::config().wmma_map, SIMT_WMMA_MAP=strided|blocked): code that reads
// fragment elements assuming a layout gives different results under the two and fails its tests.
// Every operation is a rendezvous of all 32 lanes of the warp (a partial or diverged warp is an
// error) and checks what CUDA requires: a 256-bit aligned pointer and ldm a multiple of 16 bytes.
// mma_sync multiplies in fp32 (tf32 operands truncated to tf32, as the tensor cores read them).
#pragma once
#include "simt.h"

namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };
namespace precision {
struct tf32 {};
}  // namespace precision

namespace detail {
template <class Use, int M, int N, int K> struct shape;
template <int M, int N, int K> struct shape<matrix_a, M, N, K> { static constexpr int R = M, C = K; };
template <int M, int N, int K> struct shape<matrix_b, M, N, K> { static constexpr int R = K, C = N; };
template <int M, int N, int K> struct shape<accumulator, M, N, K> { static constexpr int R = M, C = N; };
template <class T> struct storage { using type = T; };
template <> struct storage<precision::tf32> { using type = float; };

// Element e of `lane` is element (r, c) of the R x C tile.
template <int R, int C>
inline void rc(int lane, int e, int& r, int& c) {
  constexpr int n = R * C / 32;
  const int idx = ::simt::config().wmma_map ? lane * n + e : e * 32 + lane;
  r = idx / C;
  c = idx % C;
}
inline int lane() { return int(::simt::detail::S().cur->lin % 32); }
inline float tf32_trunc(float v) {  // what a tensor core reads of a tf32 operand: 10 mantissa bits
  unsigned u;
  memcpy(&u, &v, 4);
  u &= 0xffffe000u;
  memcpy(&v, &u, 4);
  return v;
}
template <class T> inline float to_f(T v) { return float(v); }
template <> inline float to_f<__half>(__half v) { return __half2float(v); }
template <> inline float to_f<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
template <class T> inline T from_f(float v) { return T(v); }
template <> inline __half from_f<__half>(float v) { return __float2half(v); }
template <> inline __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16(v); }

// All 32 lanes, converged (the rendezvous fails otherwise; see resolve_warps).
inline void converge(const char* file, int line) {
  ::simt::detail::syncwarp(0xffffffffu, ::simt::WMMA, file, line);
}
template <class E>
inline void check_ptr(const E* p, unsigned ldm, const char* what, const char* file, int line) {
  using namespace ::simt::detail;
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0 || (ldm * sizeof(E)) % 16 != 0) {
    char b[300];
    snprintf(b, sizeof b, " %s at %s:%d: pointer %p must be 256-bit aligned and ldm (%u elements) a "
             "multiple of 16 bytes", what, file, line, static_cast<const void*>(p), ldm);
    device_fail(where(S().cur) + b);
  }
}
}  // namespace detail

// Rounds to tf32 (10 mantissa bits), to nearest with ties away from zero, as cvt.rna.tf32.f32.
inline float __float_to_tf32(float v) {
  if (!std::isfinite(v)) return v;
  unsigned u;
  memcpy(&u, &v, 4);
  u = (u + 0x1000u) & 0xffffe000u;
  memcpy(&v, &u, 4);
  return v;
}

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
  using S = detail::shape<Use, M, N, K>;
  using element_type = typename detail::storage<T>::type;
  static constexpr int num_elements = S::R * S::C / 32;
  element_type x[num_elements];
};

template <class Use, int M, int N, int K, class T, class L, class V>
inline void fill_fragment(fragment<Use, M, N, K, T, L>& f, const V& v) {
  using E = typename fragment<Use, M, N, K, T, L>::element_type;
  for (auto& e : f.x) e = detail::from_f<E>(detail::to_f(v));
}

// matrix_a / matrix_b: the memory layout is part of the fragment type.
template <class Use, int M, int N, int K, class T, class L>
inline void load_matrix_sync(fragment<Use, M, N, K, T, L>& f,
                             const typename fragment<Use, M, N, K, T, L>::element_type* p, unsigned ldm,
                             SIMT_SITE) {
  static_assert(!std::is_same_v<Use, accumulator>, "an accumulator load takes a layout_t");
  using Sh = detail::shape<Use, M, N, K>;
  detail::converge(file_, line_);
  detail::check_ptr(p, ldm, "wmma::load_matrix_sync", file_, line_);
  for (int e = 0; e < f.num_elements; ++e) {
    int r, c;
    detail::rc<Sh::R, Sh::C>(detail::lane(), e, r, c);
    f.x[e] = std::is_same_v<L, row_major> ? p[size_t(r) * ldm + c] : p[size_t(c) * ldm + r];
  }
}

template <int M, int N, int K, class T>
inline void load_matrix_sync(fragment<accumulator, M, N, K, T>& f, const T* p, unsigned ldm, layout_t l,
                             SIMT_SITE) {
  detail::converge(file_, line_);
  detail::check_ptr(p, ldm, "wmma::load_matrix_sync", file_, line_);
  for (int e = 0; e < f.num_elements; ++e) {
    int r, c;
    detail::rc<M, N>(detail::lane(), e, r, c);
    f.x[e] = l == mem_row_major ? p[size_t(r) * ldm + c] : p[size_t(c) * ldm + r];
  }
}

template <int M, int N, int K, class T>
inline void store_matrix_sync(T* p, const fragment<accumulator, M, N, K, T>& f, unsigned ldm, layout_t l,
                              SIMT_SITE) {
  detail::converge(file_, line_);
  detail::check_ptr(p, ldm, "wmma::store_matrix_sync", file_, line_);
  for (int e = 0; e < f.num_elements; ++e) {
    int r, c;
    detail::rc<M, N>(detail::lane(), e, r, c);
    (l == mem_row_major ? p[size_t(r) * ldm + c] : p[size_t(c) * ldm + r]) = f.x[e];
  }
}

// D = A B + C. The lanes publish their pieces into a per-warp scratch, meet, and each lane computes
// its own elements of D in fp32; a second meeting keeps the scratch until every lane has read it.
template <int M, int N, int K, class TA, class LA, class TB, class LB, class TC>
SIMT_RT void mma_sync(fragment<accumulator, M, N, K, TC>& d, const fragment<matrix_a, M, N, K, TA, LA>& a,
                      const fragment<matrix_b, M, N, K, TB, LB>& b, const fragment<accumulator, M, N, K, TC>& c,
                      SIMT_SITE) {
  struct Scratch {
    float A[M * K], B[K * N], C[M * N];
  };
  static Scratch sc[32];  // one per warp of the running block (blocks run one at a time)
  Scratch& s = sc[::simt::detail::S().cur->lin / 32];
  constexpr bool tf32 = std::is_same_v<TA, precision::tf32>;
  const int ln = detail::lane();
  int r, col;
  for (int e = 0; e < a.num_elements; ++e) {
    detail::rc<M, K>(ln, e, r, col);
    const float v = detail::to_f(a.x[e]);
    s.A[r * K + col] = tf32 ? detail::tf32_trunc(v) : v;
  }
  for (int e = 0; e < b.num_elements; ++e) {
    detail::rc<K, N>(ln, e, r, col);
    const float v = detail::to_f(b.x[e]);
    s.B[r * N + col] = tf32 ? detail::tf32_trunc(v) : v;
  }
  for (int e = 0; e < c.num_elements; ++e) {
    detail::rc<M, N>(ln, e, r, col);
    s.C[r * N + col] = detail::to_f(c.x[e]);
  }
  detail::converge(file_, line_);
  for (int e = 0; e < d.num_elements; ++e) {
    detail::rc<M, N>(ln, e, r, col);
    float acc = s.C[r * N + col];
    for (int k = 0; k < K; ++k) acc = fmaf(s.A[r * K + k], s.B[k * N + col], acc);
    d.x[e] = detail::from_f<TC>(acc);
  }
  const float fault = ::simt::config().wmma_fault;
  if (fault != 0 && ::simt::detail::S().cur->lin == 0 && blockIdx.x == 0 && blockIdx.y == 0 && blockIdx.z == 0)
    d.x[0] = detail::from_f<TC>(detail::to_f(d.x[0]) + fault);
  detail::converge(file_, line_);
}
}  // namespace wmma
}  // namespace nvcuda
