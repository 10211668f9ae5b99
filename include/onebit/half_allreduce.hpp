// HalfAllreduce: the warmup exchange in 16 bits (docs/algorithm.md §11). Every rank rounds its
// gradient to bf16 or fp16, rank j sums chunk j of every rank's values in fp32 (in rank order) and
// divides by P, rounds the average to 16 bits and sends it to all: half the bytes of an fp32
// allreduce, and the same bits on every rank.
#pragma once
#include <bit>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "onebit/communicator.hpp"
#include "onebit/thread_pool.hpp"

namespace onebit {

// What the warmup exchange puts on the wire.
enum class WirePrecision { kFp32, kBf16, kFp16 };

// "fp32", "bf16", "fp16".
const char* to_string(WirePrecision p);
// Throws onebit::Error naming the valid names.
WirePrecision parse_wire_precision(const std::string& name);
// Bytes one value takes on the wire: 4 for fp32, 2 for bf16 and fp16.
inline constexpr int wire_bytes(WirePrecision p) { return p == WirePrecision::kFp32 ? 4 : 2; }

// The pinned conversions: round to nearest, ties to even, in integer arithmetic (independent of
// the FPU's rounding mode). A NaN stays a (quiet) NaN, and a value past the format's range becomes
// an infinity of its sign: for fp16, anything of magnitude 65520 or more.
inline uint16_t to_bf16(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((x >> 16) | 0x0040u);
  return static_cast<uint16_t>((x + 0x7FFFu + ((x >> 16) & 1u)) >> 16);
}

inline float from_bf16(uint16_t h) { return std::bit_cast<float>(static_cast<uint32_t>(h) << 16); }

inline uint16_t to_fp16(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  const auto sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t a = x & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return sign | 0x7E00u;     // NaN
  if (a >= 0x477FF000u) return sign | 0x7C00u;    // >= 65520 (and infinity): infinity
  if (a >= 0x38800000u) {                         // >= 2^-14: a normal fp16
    const uint32_t r = a + 0x0FFFu + ((a >> 13) & 1u);
    return static_cast<uint16_t>(sign | ((r - 0x38000000u) >> 13));
  }
  // Subnormal fp16: the value in units of 2^-24, rounded. a = mantissa * 2^(exponent - 150).
  const uint32_t e = a >> 23;
  if (e < 102) return sign;  // below 2^-25: rounds to zero (2^-25 itself is a tie to even 0)
  const uint32_t mant = (a & 0x7FFFFFu) | 0x800000u;
  const uint32_t shift = 126 - e;  // 14 .. 24
  const uint32_t q = mant >> shift, rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
  return static_cast<uint16_t>(sign | (q + (rem > half || (rem == half && (q & 1u)))));
}

inline float from_fp16(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 0x1Fu, m = h & 0x3FFu;
  if (e == 0x1F) return std::bit_cast<float>(sign | 0x7F800000u | (m << 13));
  if (e == 0) {
    const float v = static_cast<float>(m) * 0x1p-24f;  // exact
    return sign ? -v : v;
  }
  return std::bit_cast<float>(sign | ((e + 112) << 23) | (m << 13));
}

// Built for at most n elements and a 16-bit precision (not kFp32).
class HalfAllreduce {
 public:
  HalfAllreduce(Communicator& comm, ThreadPool& pool, size_t n, WirePrecision precision);

  // Averages x (at most n elements) over all ranks in place: every rank ends with the same bits.
  // Each element's result depends on that element alone (the sum runs over ranks in order), so
  // averaging a buffer in pieces gives the bits of averaging it whole. A NaN or infinity on any
  // rank (or an fp16 overflow) shows as a non-finite value in every rank's result. One rank sends
  // nothing and leaves x as it is, as the fp32 exchange does.
  void average(std::span<float> x);

  size_t size() const { return n_; }
  WirePrecision precision() const { return precision_; }

 private:
  Communicator& comm_;
  ThreadPool& pool_;
  size_t n_;
  WirePrecision precision_;
  std::vector<uint16_t> wire_, received_, mine_;
};

}  // namespace onebit
