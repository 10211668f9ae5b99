// AVX-512 16-wide group: one __m512. Only ops whose IEEE results match the generic ones (no FMA).
#pragma once
#include <immintrin.h>

#include <cstdint>

namespace ONEBIT_ISA_NS {

struct G {
  __m512 a;
};

inline G load(const float* p) { return {_mm512_loadu_ps(p)}; }
inline void store(float* p, const G& x) { _mm512_storeu_ps(p, x.a); }
inline G set1(float x) { return {_mm512_set1_ps(x)}; }
inline G add(const G& x, const G& y) { return {_mm512_add_ps(x.a, y.a)}; }
inline G sub(const G& x, const G& y) { return {_mm512_sub_ps(x.a, y.a)}; }
inline G mul(const G& x, const G& y) { return {_mm512_mul_ps(x.a, y.a)}; }
inline G div(const G& x, const G& y) { return {_mm512_div_ps(x.a, y.a)}; }
inline G sqrt(const G& x) { return {_mm512_sqrt_ps(x.a)}; }
// (x > y) ? x : y, like the generic code
inline G max(const G& x, const G& y) {
  return {_mm512_mask_blend_ps(_mm512_cmp_ps_mask(x.a, y.a, _CMP_GT_OQ), y.a, x.a)};
}
inline uint16_t ge0_bits(const G& x) {
  return static_cast<uint16_t>(_mm512_cmp_ps_mask(x.a, _mm512_setzero_ps(), _CMP_GE_OQ));
}
inline G pm_sign(const G& x, float s) {
  return {_mm512_mask_blend_ps(_mm512_cmp_ps_mask(x.a, _mm512_setzero_ps(), _CMP_GE_OQ),
                               _mm512_set1_ps(-s), _mm512_set1_ps(s))};
}
// Non-temporal store (p must be 64-byte aligned).
inline void stream(float* p, const G& x) { _mm512_stream_ps(p, x.a); }
inline void stream_fence() { _mm_sfence(); }
// element j = one when bit j is set, else zero
inline G from_bits(uint16_t bits, float one, float zero) {
  return {_mm512_mask_blend_ps(static_cast<__mmask16>(bits), _mm512_set1_ps(zero), _mm512_set1_ps(one))};
}

struct Acc {
  __m512d v[2] = {_mm512_setzero_pd(), _mm512_setzero_pd()};
  static __m512d sq(__m256 x) {
    const __m512d d = _mm512_cvtps_pd(x);
    return _mm512_mul_pd(d, d);
  }
  void add_sq(const G& x) {
    v[0] = _mm512_add_pd(v[0], sq(_mm512_castps512_ps256(x.a)));
    v[1] = _mm512_add_pd(v[1], sq(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x.a), 1))));
  }
  void load(const double* p) {
    v[0] = _mm512_loadu_pd(p);
    v[1] = _mm512_loadu_pd(p + 8);
  }
  void store(double* p) const {
    _mm512_storeu_pd(p, v[0]);
    _mm512_storeu_pd(p + 8, v[1]);
  }
};

inline void store_max(float* p, const G& x) { store(p, x); }

}  // namespace ONEBIT_ISA_NS
