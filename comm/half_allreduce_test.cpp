// The pinned 16-bit conversions and the 16-bit allreduce, over ranks as threads.
#include "onebit/half_allreduce.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "../tests/simulation.hpp"
#include "onebit/error.hpp"
#include "onebit/local_comm.hpp"

namespace onebit {
namespace {

using testing::Vec;

// The exact value halfway between two adjacent 16-bit values a < b (both finite), in double.
template <class From>
double midpoint(From from, uint16_t a, uint16_t b) {
  return (static_cast<double>(from(a)) + static_cast<double>(from(b))) / 2;
}

// For every positive finite 16-bit value h: it converts back to itself, and the floats around the
// midpoint to its successor round to nearest with ties to even. Negative values mirror it.
template <class To, class From>
void check_rounding(To to, From from, uint16_t max_finite) {
  for (uint16_t h = 0; h < max_finite; ++h) {
    const float v = from(h);
    ASSERT_EQ(to(v), h) << "value " << v;
    ASSERT_EQ(to(-v), h | 0x8000) << "value " << -v;
    const double mid = midpoint(from, h, static_cast<uint16_t>(h + 1));
    const auto m = static_cast<float>(mid);
    if (static_cast<double>(m) != mid) continue;  // the midpoint is not a float (fp16 subnormals are)
    const uint16_t even = (h & 1) ? static_cast<uint16_t>(h + 1) : h;
    ASSERT_EQ(to(m), even) << "tie between " << from(h) << " and " << from(static_cast<uint16_t>(h + 1));
    ASSERT_EQ(to(std::nextafter(m, 0.0f)), h);
    ASSERT_EQ(to(std::nextafter(m, std::numeric_limits<float>::infinity())), static_cast<uint16_t>(h + 1));
  }
}

TEST(HalfConversion, Bf16RoundsToNearestEven) { check_rounding(to_bf16, from_bf16, 0x7F7F); }

TEST(HalfConversion, Fp16RoundsToNearestEven) { check_rounding(to_fp16, from_fp16, 0x7BFF); }

TEST(HalfConversion, RangeEndsInfinitiesAndNaNs) {
  const float inf = std::numeric_limits<float>::infinity(), nan = std::nanf("");
  EXPECT_EQ(to_fp16(65504.0f), 0x7BFF);
  EXPECT_EQ(to_fp16(65519.99f), 0x7BFF);
  EXPECT_EQ(to_fp16(65520.0f), 0x7C00);  // the tie above the largest fp16 goes to infinity
  EXPECT_EQ(to_fp16(-1e6f), 0xFC00);
  EXPECT_EQ(to_fp16(inf), 0x7C00);
  EXPECT_TRUE(std::isnan(from_fp16(to_fp16(nan))));
  EXPECT_EQ(to_fp16(0x1p-25f), 0x0000);  // a tie between 0 and the smallest subnormal: even 0
  EXPECT_EQ(to_fp16(std::nextafter(0x1p-25f, 1.0f)), 0x0001);
  EXPECT_EQ(to_fp16(1e-30f), 0x0000);
  EXPECT_EQ(to_fp16(-0.0f), 0x8000);
  EXPECT_EQ(to_bf16(std::numeric_limits<float>::max()), 0x7F80);  // rounds past bf16's largest
  EXPECT_EQ(to_bf16(-inf), 0xFF80);
  EXPECT_TRUE(std::isnan(from_bf16(to_bf16(nan))));
  EXPECT_TRUE(std::isnan(from_bf16(to_bf16(std::bit_cast<float>(0x7F800001u)))));  // not rounded to inf
  EXPECT_EQ(from_bf16(to_bf16(1e-40f)), std::bit_cast<float>(0x00010000u));           // subnormal kept
}

#ifdef __FLT16_MAX__
// The compiler's own fp32 -> fp16 conversion (IEEE round to nearest even) over a sweep of floats.
TEST(HalfConversion, Fp16MatchesTheCompilersFloat16) {
  for (uint64_t x = 0; x <= 0xFFFFFFFFu; x += 509) {
    const float f = std::bit_cast<float>(static_cast<uint32_t>(x));
    if (std::isnan(f)) continue;
    const auto want = std::bit_cast<uint16_t>(static_cast<_Float16>(f));
    ASSERT_EQ(to_fp16(f), want) << "bits " << std::hex << x;
    ASSERT_EQ(std::bit_cast<uint32_t>(from_fp16(want)), std::bit_cast<uint32_t>(static_cast<float>(std::bit_cast<_Float16>(want))));
  }
}
#endif

TEST(WirePrecision, NamesParseAndBadNamesAreErrors) {
  for (auto p : {WirePrecision::kFp32, WirePrecision::kBf16, WirePrecision::kFp16})
    EXPECT_EQ(parse_wire_precision(to_string(p)), p);
  try {
    parse_wire_precision("fp8");
    FAIL() << "fp8 parsed";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("use fp32, bf16 or fp16"), std::string::npos) << e.what();
  }
}

struct Case {
  int world;
  size_t n;
  WirePrecision precision;
};

class HalfAllreduceCases : public ::testing::TestWithParam<Case> {};

TEST_P(HalfAllreduceCases, EveryRankGetsThePinnedAverage) {
  // Plain copies, not a structured binding: clang 14 (the sanitizer build) cannot capture bindings.
  const int P = GetParam().world;
  const size_t n = GetParam().n;
  const WirePrecision precision = GetParam().precision;
  std::vector<Vec> x;
  for (int p = 0; p < P; ++p) x.push_back(testing::random_vec(n, 77 + p, 3.0f));
  const bool bf16 = precision == WirePrecision::kBf16;
  const Vec want = P == 1                 ? x[0]
                   : bf16 ? testing::pinned_half_average(x, to_bf16, from_bf16)
                          : testing::pinned_half_average(x, to_fp16, from_fp16);
  std::vector<Vec> got(static_cast<size_t>(P));
  std::vector<CommStats> stats(static_cast<size_t>(P));
  run_local(P, [&](Communicator& comm) {
    ThreadPool pool(3);
    HalfAllreduce ar(comm, pool, n, precision);
    Vec mine = x[static_cast<size_t>(comm.rank())];
    ar.average(mine);
    got[static_cast<size_t>(comm.rank())] = mine;
    stats[static_cast<size_t>(comm.rank())] = comm.stats();
  });
  for (int p = 0; p < P; ++p) EXPECT_TRUE(testing::bitwise_equal(got[p], want)) << "rank " << p;
  // An all-to-all and an all-gather of 2-byte values: 2(P-1)/P * 2n bytes, half of fp32's ring.
  const size_t chunk = (n + P - 1) / P;
  EXPECT_EQ(stats[0].bytes_sent, 2 * static_cast<uint64_t>(P - 1) * chunk * 2);
}

INSTANTIATE_TEST_SUITE_P(Sizes, HalfAllreduceCases,
                         ::testing::Values(Case{1, 1000, WirePrecision::kBf16}, Case{2, 0, WirePrecision::kBf16},
                                           Case{2, 1001, WirePrecision::kBf16}, Case{3, 7, WirePrecision::kFp16},
                                           Case{4, 100003, WirePrecision::kBf16}, Case{4, 4099, WirePrecision::kFp16}),
                         [](const auto& info) {
                           return std::string(to_string(info.param.precision)) + "_P" +
                                  std::to_string(info.param.world) + "_n" + std::to_string(info.param.n);
                         });

TEST(HalfAllreduce, ANonFiniteValueOnOneRankShowsOnEveryRank) {
  const int P = 3;
  const size_t n = 50;
  std::vector<Vec> got(P);
  run_local(P, [&](Communicator& comm) {
    ThreadPool pool(1);
    HalfAllreduce ar(comm, pool, n, WirePrecision::kFp16);
    Vec x(n, 1.0f);
    if (comm.rank() == 2) x[7] = std::numeric_limits<float>::quiet_NaN();
    if (comm.rank() == 1) x[40] = 1e5f;  // past fp16's range
    ar.average(x);
    got[static_cast<size_t>(comm.rank())] = x;
  });
  for (int p = 0; p < P; ++p) {
    EXPECT_TRUE(std::isnan(got[p][7])) << "rank " << p;
    EXPECT_TRUE(std::isinf(got[p][40])) << "rank " << p;
    EXPECT_EQ(got[p][8], 1.0f);
  }
}

// The overlapped warmup exchange averages the gradient in buckets of whole layers, in any order:
// the bits are those of one exchange of the whole buffer.
TEST(HalfAllreduce, AveragingInPiecesGivesTheBitsOfTheWhole) {
  const int P = 3;
  const size_t n = 10007;
  const std::vector<size_t> cuts = {10007, 9000, 4096, 4095, 17, 0};  // pieces from the end, as backward gives them
  std::vector<Vec> x;
  for (int p = 0; p < P; ++p) x.push_back(testing::random_vec(n, 5 + p, 2.0f));
  const Vec want = testing::pinned_half_average(x, to_bf16, from_bf16);
  std::vector<Vec> got(P);
  run_local(P, [&](Communicator& comm) {
    ThreadPool pool(2);
    HalfAllreduce ar(comm, pool, n, WirePrecision::kBf16);
    Vec mine = x[static_cast<size_t>(comm.rank())];
    for (size_t i = 1; i < cuts.size(); ++i)
      ar.average(std::span<float>(mine).subspan(cuts[i], cuts[i - 1] - cuts[i]));
    got[static_cast<size_t>(comm.rank())] = mine;
  });
  for (int p = 0; p < P; ++p) EXPECT_TRUE(testing::bitwise_equal(got[p], want)) << "rank " << p;
}

TEST(HalfAllreduce, RefusesFp32AndAWrongSize) {
  run_local(1, [&](Communicator& comm) {
    ThreadPool pool(1);
    EXPECT_THROW(HalfAllreduce(comm, pool, 10, WirePrecision::kFp32), Error);
    HalfAllreduce ar(comm, pool, 10, WirePrecision::kBf16);
    Vec x(11);
    EXPECT_THROW(ar.average(x), Error);
  });
}

}  // namespace
}  // namespace onebit
