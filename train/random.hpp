// Counter-based randomness for the trainer: every random choice (data order, masks, dropout seeds)
// is a pure function of the seed and a position, so a resumed run needs no generator state.
#pragma once
#include <cstdint>
#include <string_view>

#include "onebit/fnv1a.hpp"

namespace onebit::train {

inline uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

inline uint64_t mix(uint64_t a, uint64_t b) { return splitmix64(a ^ splitmix64(b)); }
inline uint64_t mix(uint64_t a, uint64_t b, uint64_t c) { return mix(mix(a, b), c); }

using onebit::fnv1a;

// A small generator on the same mixer: same sequence on every machine and compiler.
class CounterRng {
 public:
  explicit CounterRng(uint64_t seed) : state_(seed) {}
  uint64_t next() { return splitmix64(state_++); }
  // Uniform in [0, 1) with 53 bits.
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }
  // Uniform in [0, n), n > 0 (the modulo bias is below 2^-40 for the n used here).
  uint64_t below(uint64_t n) { return next() % n; }

 private:
  uint64_t state_;
};

}  // namespace onebit::train
