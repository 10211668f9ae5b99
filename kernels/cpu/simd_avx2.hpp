// AVX2 16-wide group: two __m256. Only ops whose IEEE results match the generic ones (no FMA).
#pragma once
#include <immintrin.h>

#include <cstdint>
#include <cstring>

namespace ONEBIT_ISA_NS {

struct G {
  __m256 a, b;
};

inline G load(const float* p) { return {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
inline void store(float* p, const G& x) { _mm256_storeu_ps(p, x.a); _mm256_storeu_ps(p + 8, x.b); }
inline G set1(float x) { return {_mm256_set1_ps(x), _mm256_set1_ps(x)}; }
inline G add(const G& x, const G& y) { return {_mm256_add_ps(x.a, y.a), _mm256_add_ps(x.b, y.b)}; }
inline G sub(const G& x, const G& y) { return {_mm256_sub_ps(x.a, y.a), _mm256_sub_ps(x.b, y.b)}; }
inline G mul(const G& x, const G& y) { return {_mm256_mul_ps(x.a, y.a), _mm256_mul_ps(x.b, y.b)}; }
inline G div(const G& x, const G& y) { return {_mm256_div_ps(x.a, y.a), _mm256_div_ps(x.b, y.b)}; }
inline G sqrt(const G& x) { return {_mm256_sqrt_ps(x.a), _mm256_sqrt_ps(x.b)}; }
// (x > y) ? x : y, like the generic code
inline G max(const G& x, const G& y) {
  return {_mm256_blendv_ps(y.a, x.a, _mm256_cmp_ps(x.a, y.a, _CMP_GT_OQ)),
          _mm256_blendv_ps(y.b, x.b, _mm256_cmp_ps(x.b, y.b, _CMP_GT_OQ))};
}
inline uint16_t ge0_bits(const G& x) {
  const __m256 z = _mm256_setzero_ps();
  const int lo = _mm256_movemask_ps(_mm256_cmp_ps(x.a, z, _CMP_GE_OQ));
  const int hi = _mm256_movemask_ps(_mm256_cmp_ps(x.b, z, _CMP_GE_OQ));
  return static_cast<uint16_t>(lo | (hi << 8));
}
inline G pm_sign(const G& x, float s) {
  const __m256 z = _mm256_setzero_ps(), pos = _mm256_set1_ps(s), neg = _mm256_set1_ps(-s);
  return {_mm256_blendv_ps(neg, pos, _mm256_cmp_ps(x.a, z, _CMP_GE_OQ)),
          _mm256_blendv_ps(neg, pos, _mm256_cmp_ps(x.b, z, _CMP_GE_OQ))};
}
// Non-temporal store (p must be 32-byte aligned): output that will not be read back soon skips the
// cache and the read-for-ownership of its lines.
inline void stream(float* p, const G& x) { _mm256_stream_ps(p, x.a); _mm256_stream_ps(p + 8, x.b); }
inline void stream_fence() { _mm_sfence(); }
inline __m256 select8(int bits8, __m256 one, __m256 zero) {
  const __m256i lane_bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  const __m256i set = _mm256_and_si256(_mm256_set1_epi32(bits8), lane_bit);
  const __m256 mask = _mm256_castsi256_ps(_mm256_cmpeq_epi32(set, lane_bit));
  return _mm256_blendv_ps(zero, one, mask);
}
// element j = one when bit j is set, else zero
inline G from_bits(uint16_t bits, float one, float zero) {
  const __m256 a = _mm256_set1_ps(one), b = _mm256_set1_ps(zero);
  return {select8(bits & 0xff, a, b), select8(bits >> 8, a, b)};
}

struct Acc {
  __m256d v[4] = {_mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd(),
                  _mm256_setzero_pd()};
  static __m256d sq(__m128 x) {
    const __m256d d = _mm256_cvtps_pd(x);
    return _mm256_mul_pd(d, d);
  }
  void add_sq(const G& x) {
    v[0] = _mm256_add_pd(v[0], sq(_mm256_castps256_ps128(x.a)));
    v[1] = _mm256_add_pd(v[1], sq(_mm256_extractf128_ps(x.a, 1)));
    v[2] = _mm256_add_pd(v[2], sq(_mm256_castps256_ps128(x.b)));
    v[3] = _mm256_add_pd(v[3], sq(_mm256_extractf128_ps(x.b, 1)));
  }
  void load(const double* p) {
    for (int q = 0; q < 4; ++q) v[q] = _mm256_loadu_pd(p + 4 * q);
  }
  void store(double* p) const {
    for (int q = 0; q < 4; ++q) _mm256_storeu_pd(p + 4 * q, v[q]);
  }
};

inline void store_max(float* p, const G& x) { store(p, x); }

}  // namespace ONEBIT_ISA_NS
