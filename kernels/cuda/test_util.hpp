// Shared by the CUDA tests: the skip where no GPU is present, random inputs of awkward sizes,
// layouts with tiny and empty layers, bitwise comparisons, and a stream per test or rank.
#pragma once
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "onebit/cuda_kernels.hpp"

// Every CUDA test starts with this: where no device is present it skips and says why.
#define ONEBIT_REQUIRE_GPU()                                                                    \
  do {                                                                                          \
    if (!::onebit::cuda::device_available())                                                    \
      GTEST_SKIP() << "no CUDA device on this machine: the CUDA code is compiled and linked "   \
                      "here and runs on a GPU machine (bench/gpu/run.sh)";                      \
  } while (0)

namespace onebit::cuda::test {

// Sizes that cross every boundary the kernels care about: a warp (32), a bit word, a tile (1024),
// a Partition block (32768), and primes in between.
inline const std::vector<size_t> kSizes = {0, 1, 31, 63, 64, 65, 1000, 1031, 32768, 32769, 100003, 262147};

class StreamGuard {
 public:
  StreamGuard() {
    if (cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking) != cudaSuccess) s_ = nullptr;
  }
  ~StreamGuard() {
    if (s_) cudaStreamDestroy(s_);
  }
  cudaStream_t get() const { return s_; }
  void sync() const { ASSERT_EQ(cudaStreamSynchronize(s_), cudaSuccess); }

 private:
  cudaStream_t s_ = nullptr;
};

// Normal values with exact zeros of both signs sprinkled in (sign(-0) = +1 must hold on both sides).
inline std::vector<float> randn(size_t n, uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) {
    const uint64_t r = rng() % 97;
    v[i] = r == 0 ? 0.0f : r == 1 ? -0.0f : d(rng);
  }
  return v;
}

inline std::vector<float> randu(size_t n, uint64_t seed, float lo, float hi) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

inline std::vector<uint8_t> random_bytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<uint8_t> v(n);
  for (auto& x : v) x = static_cast<uint8_t>(rng());
  return v;
}

// Layer bounds over [0, n): a mix of big layers, tiny ones (1-40 elements) and empty ones.
inline std::vector<size_t> random_bounds(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<size_t> b = {0};
  while (b.back() < n) {
    const uint64_t kind = rng() % 6;
    size_t len = kind == 0 ? 0 : kind <= 2 ? 1 + rng() % 40 : 1 + rng() % (n / 3 + 1);
    len = std::min(len, n - b.back());
    b.push_back(b.back() + len);
  }
  if (b.size() == 1) b.push_back(n);  // n == 0: one empty layer
  return b;
}

inline std::vector<size_t> sizes_of(const std::vector<size_t>& bounds) {
  std::vector<size_t> s;
  for (size_t i = 0; i + 1 < bounds.size(); ++i) s.push_back(bounds[i + 1] - bounds[i]);
  return s;
}

template <class T>
uint64_t bits_of(T x) {
  uint64_t u = 0;
  std::memcpy(&u, &x, sizeof x);
  return u;
}

// Bitwise equality of two arrays; on a mismatch names the first index, both values, and the count.
template <class T>
::testing::AssertionResult same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  if (a.size() != b.size())
    return ::testing::AssertionFailure() << "sizes " << a.size() << " and " << b.size();
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < a.size(); ++i)
    if (bits_of(a[i]) != bits_of(b[i]) && bad++ == 0) first = i;
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << bad << " of " << a.size() << " differ; first at " << first
                                       << ": " << +a[first] << " vs " << +b[first];
}

// A sum: bitwise equal (the pinned order), and so certainly within the 1e-12 relative bound.
inline ::testing::AssertionResult same_sum(double a, double b) {
  if (bits_of(a) == bits_of(b)) return ::testing::AssertionSuccess();
  const double rel = std::abs(a - b) / std::max(std::abs(a), std::abs(b));
  return ::testing::AssertionFailure() << a << " vs " << b << " (relative difference " << rel
                                       << (rel <= 1e-12 ? ", within 1e-12 but not the pinned order)" : ")");
}

// A host vector on the device.
template <class T>
DeviceArray<T> dev(const std::vector<T>& v) {
  return DeviceArray<T>(std::span<const T>(v));
}

template <class T>
std::vector<T> to_host(const T* dev, size_t n) {
  std::vector<T> v(n);
  if (n) {
    EXPECT_EQ(cudaMemcpy(v.data(), dev, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
  }
  return v;
}

// The scale groups a partition's pieces index (at least one).
inline size_t groups_of(const kernels::Partition& part) {
  size_t g = 1;
  for (const auto& p : part.pieces()) g = std::max<size_t>(g, p.group + 1);
  return g;
}

// Momenta as the optimizers hand them over: plain values, or signs with per-group scales, k and
// masks on every third layer (0/1 values). Owns the host and device copies.
struct Momenta {
  std::vector<float> values, scales, k;
  std::vector<uint8_t> bits;
  std::vector<std::vector<float>> masks;
  std::vector<const float*> mask_ptrs, dmask_ptrs;
  std::vector<DeviceArray<float>> dmasks;
  DeviceArray<float> dvalues, dscales, dk;
  DeviceArray<uint8_t> dbits;
  DeviceArray<const float*> dptrs;

  Momenta(const kernels::Partition& part, size_t groups, uint64_t seed) {
    const size_t n = part.size(), L = part.num_layers();
    values = randn(n, seed, 0.1f);
    bits = random_bytes((n + 63) / 64 * 8 + 8, seed + 1);
    scales = randu(groups, seed + 2, 0.01f, 1.0f);
    k = randu(L, seed + 3, 0.5f, 3.0f);
    masks.resize(L);
    mask_ptrs.assign(L, nullptr);
    dmask_ptrs.assign(L, nullptr);
    dmasks.resize(L);
    for (size_t l = 0; l < L; l += 3) {
      const size_t len = (l + 1 < L ? part.layer_start(l + 1) : n) - part.layer_start(l);
      masks[l] = randu(len, seed + 100 + l, 0.0f, 1.0f);
      for (auto& x : masks[l]) x = x < 0.3f ? 0.0f : 1.0f;
      mask_ptrs[l] = masks[l].data();
      dmasks[l] = dev(masks[l]);
      dmask_ptrs[l] = dmasks[l].data();
    }
    dvalues = dev(values), dscales = dev(scales), dk = dev(k), dbits = dev(bits), dptrs = dev(dmask_ptrs);
  }
  kernels::Momentum host(bool signs) const {
    if (!signs) return {.values = values.data()};
    return {.bits = bits.data(), .scales = scales.data(), .k = k.data(), .masks = mask_ptrs.data()};
  }
  kernels::Momentum device(bool signs) const {
    if (!signs) return {.values = dvalues.data()};
    return {.bits = dbits.data(), .scales = dscales.data(), .k = dk.data(), .masks = dptrs.data()};
  }
};

}  // namespace onebit::cuda::test
