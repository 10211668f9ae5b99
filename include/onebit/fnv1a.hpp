// FNV-1a, 64-bit: the checkpoint checksum, the fingerprints ranks compare when an optimizer is
// built, and the trainer's seeds and cache keys. One definition, since the checkpoint format
// depends on it.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace onebit {

inline constexpr uint64_t kFnv1aOffset = 0xcbf29ce484222325ull;

// Continues hash h over n bytes at p (start from kFnv1aOffset).
inline uint64_t fnv1a(const void* p, size_t n, uint64_t h = kFnv1aOffset) {
  const auto* b = static_cast<const unsigned char*>(p);
  for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 0x100000001b3ull;
  return h;
}
inline uint64_t fnv1a(std::string_view s, uint64_t h = kFnv1aOffset) { return fnv1a(s.data(), s.size(), h); }

}  // namespace onebit
