// Portable 16-wide "vector": plain arrays the compiler may vectorize for the baseline target.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

namespace ONEBIT_ISA_NS {

struct G {
  float v[16];
};
#define ONEBIT_G_LOOP(expr)       \
  G r;                            \
  for (int j = 0; j < 16; ++j) r.v[j] = (expr); \
  return r

inline G load(const float* p) { G r; std::memcpy(r.v, p, sizeof r.v); return r; }
inline void store(float* p, const G& a) { std::memcpy(p, a.v, sizeof a.v); }
inline G set1(float x) { ONEBIT_G_LOOP(x); }
inline G add(const G& a, const G& b) { ONEBIT_G_LOOP(a.v[j] + b.v[j]); }
inline G sub(const G& a, const G& b) { ONEBIT_G_LOOP(a.v[j] - b.v[j]); }
inline G mul(const G& a, const G& b) { ONEBIT_G_LOOP(a.v[j] * b.v[j]); }
inline G div(const G& a, const G& b) { ONEBIT_G_LOOP(a.v[j] / b.v[j]); }
inline G sqrt(const G& a) { ONEBIT_G_LOOP(std::sqrt(a.v[j])); }
inline G max(const G& a, const G& b) { ONEBIT_G_LOOP(a.v[j] > b.v[j] ? a.v[j] : b.v[j]); }
// bit j set when element j >= 0 (so -0.0 counts as positive)
inline uint16_t ge0_bits(const G& a) {
  uint16_t r = 0;
  for (int j = 0; j < 16; ++j) r |= static_cast<uint16_t>(a.v[j] >= 0.0f) << j;
  return r;
}
// element j = +s when a.v[j] >= 0, else -s (s * sign(a))
inline G pm_sign(const G& a, float s) { ONEBIT_G_LOOP(a.v[j] >= 0.0f ? s : -s); }
// A store that may bypass the cache (no difference here).
inline void stream(float* p, const G& a) { store(p, a); }
inline void stream_fence() {}
// element j = one when bit j is set, else zero
inline G from_bits(uint16_t bits, float one, float zero) { ONEBIT_G_LOOP((bits >> j) & 1 ? one : zero); }
#undef ONEBIT_G_LOOP

// 16 double lanes
struct Acc {
  double v[16] = {};
  void add_sq(const G& a) {
    for (int j = 0; j < 16; ++j) v[j] += static_cast<double>(a.v[j]) * static_cast<double>(a.v[j]);
  }
  void load(const double* p) { std::memcpy(v, p, sizeof v); }
  void store(double* p) const { std::memcpy(p, v, sizeof v); }
};

inline void store_max(float* p, const G& a) { store(p, a); }

}  // namespace ONEBIT_ISA_NS
