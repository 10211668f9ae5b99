// The device 16-bit warmup exchange against the CPU's HalfAllreduce, bit for bit on every rank:
// several ranks on one GPU over the local thread backend (staged through host memory), bf16 and
// fp16, whole buffers, prefixes and pieces at an offset, with NaNs, fp16 overflows, fp16 subnormals
// and sums past fp32's range; and its kernels' 16-bit conversions against the CPU's.
#include <bit>
#include <cmath>
#include <limits>
#include <string>

#include "cuda_half_allreduce.hpp"
#include "device_collectives.hpp"
#include "half_kernels.hpp"
#include "onebit/error.hpp"
#include "onebit/local_comm.hpp"
#include "onebit/thread_pool.hpp"
#include "test_util.hpp"

namespace onebit::cuda {
namespace {

using namespace test;
using Vec = std::vector<float>;

constexpr int kCalls = 3;

// Rank r's input for call c: normal values with every 7th scaled into fp16's subnormal range; from
// 4 elements on, a NaN on the last rank, a value past fp16's range on rank 0 and, on every rank, one
// near fp32's largest, so that the fp32 sum of two ranks overflows. One element: rank 0's overflow.
Vec input(size_t n, int rank, int world, int call) {
  Vec x = randn(n, 1000003ull * static_cast<uint64_t>(call) + 1009ull * static_cast<uint64_t>(rank) + n, 3.0f);
  for (size_t i = 0; i < n; i += 7) x[i] *= 1e-6f;
  if (n >= 4) {
    if (rank == world - 1) x[n / 2] = std::numeric_limits<float>::quiet_NaN();
    if (rank == 0) x[n / 4] = 70000.0f;
    x[3 * n / 4] = 3.0e38f;
  } else if (n > 0 && rank == 0) {
    x[0] = 70000.0f;
  }
  return x;
}

// The part of the buffer call c averages: the whole, a prefix, a piece ending at the buffer's end.
struct Piece {
  size_t first, count;
};
Piece piece(size_t n, int call) {
  if (call == 0) return {0, n};
  if (call == 1) return {0, n - n / 3};
  return {n / 3, n - n / 3};
}

using Outputs = std::vector<std::vector<Vec>>;  // [rank][call]: the whole buffer after the call

Outputs run_cpu(int world, size_t n, WirePrecision precision) {
  Outputs out(static_cast<size_t>(world));
  run_local(world, [&](Communicator& comm) {
    ThreadPool pool(2);
    HalfAllreduce ar(comm, pool, n, precision);
    for (int c = 0; c < kCalls; ++c) {
      Vec x = input(n, comm.rank(), world, c);
      const Piece p = piece(n, c);
      ar.average(std::span<float>(x).subspan(p.first, p.count));
      out[static_cast<size_t>(comm.rank())].push_back(x);
    }
  });
  return out;
}

Outputs run_gpu(int world, size_t n, WirePrecision precision) {
  Outputs out(static_cast<size_t>(world));
  run_local(world, [&](Communicator& comm) {
    ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
    StreamGuard stream;
    DeviceCollectives coll(comm, stream.get());
    CudaHalfAllreduce ar(coll, n, precision);  // one object for every call: its buffers are reused
    for (int c = 0; c < kCalls; ++c) {
      DeviceArray<float> x(std::span<const float>(input(n, comm.rank(), world, c)));
      const Piece p = piece(n, c);
      ar.average(x.data() + p.first, p.count);
      coll.wait("cuda 16-bit allreduce test");
      out[static_cast<size_t>(comm.rank())].push_back(x.download());
    }
  });
  return out;
}

TEST(CudaHalfAllreduce, MatchesCpuOnEveryRank) {
  ONEBIT_REQUIRE_GPU();
  for (WirePrecision precision : {WirePrecision::kBf16, WirePrecision::kFp16}) {
    for (int world : {1, 2, 3, 4}) {
      for (size_t n : {size_t{0}, size_t{1}, size_t{1000}, size_t{100003}}) {
        SCOPED_TRACE(testing::Message() << to_string(precision) << ", world " << world << ", " << n << " elements");
        const Outputs cpu = run_cpu(world, n, precision), gpu = run_gpu(world, n, precision);
        for (int r = 0; r < world; ++r) {
          const auto& want = cpu[static_cast<size_t>(r)];
          const auto& got = gpu[static_cast<size_t>(r)];
          ASSERT_EQ(got.size(), static_cast<size_t>(kCalls)) << "rank " << r;
          for (int c = 0; c < kCalls; ++c)
            EXPECT_TRUE(same_bits(want[static_cast<size_t>(c)], got[static_cast<size_t>(c)])) << "rank " << r << ", call " << c;
          if (world == 1 || n < 4) continue;
          // The non-finite inputs show on every rank, for the LAMB pass after the exchange to skip on.
          const Vec& whole = got[0];
          EXPECT_TRUE(std::isnan(whole[n / 2])) << "rank " << r;
          EXPECT_TRUE(std::isinf(whole[3 * n / 4])) << "rank " << r;
          if (precision == WirePrecision::kFp16) {
            EXPECT_TRUE(std::isinf(whole[n / 4])) << "rank " << r;
          }
        }
      }
    }
  }
}

// The kernels call the CPU's constexpr conversions; this checks what the device compiler made of
// them: a sweep over all float bit patterns (NaNs, infinities, subnormals, ties included) rounded,
// and every 16-bit word widened, against the CPU, bit for bit.
TEST(CudaHalfKernels, ConversionsMatchTheCpu) {
  ONEBIT_REQUIRE_GPU();
  ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
  StreamGuard stream;
  Vec sweep;
  for (uint64_t b = 0; b <= 0xFFFFFFFFu; b += 509) sweep.push_back(std::bit_cast<float>(static_cast<uint32_t>(b)));
  std::vector<uint16_t> words(65536);
  for (size_t h = 0; h < words.size(); ++h) words[h] = static_cast<uint16_t>(h);
  const DeviceArray<float> dsweep{std::span<const float>(sweep)};
  const DeviceArray<uint16_t> dwords{std::span<const uint16_t>(words)};
  DeviceArray<uint16_t> rounded(sweep.size());
  DeviceArray<float> widened(words.size());
  for (WirePrecision precision : {WirePrecision::kBf16, WirePrecision::kFp16}) {
    SCOPED_TRACE(to_string(precision));
    const bool bf16 = precision == WirePrecision::kBf16;
    round_to_half(dsweep.data(), rounded.data(), sweep.size(), precision, stream.get());
    widen_half(dwords.data(), widened.data(), words.size(), precision, stream.get());
    stream.sync();
    std::vector<uint16_t> want_rounded(sweep.size());
    for (size_t i = 0; i < sweep.size(); ++i) want_rounded[i] = bf16 ? to_bf16(sweep[i]) : to_fp16(sweep[i]);
    Vec want_widened(words.size());
    for (size_t h = 0; h < words.size(); ++h) want_widened[h] = bf16 ? from_bf16(words[h]) : from_fp16(words[h]);
    EXPECT_TRUE(same_bits(want_rounded, rounded.download()));
    EXPECT_TRUE(same_bits(want_widened, widened.download()));
  }
}

TEST(CudaHalfAllreduce, RefusesFp32AndAWrongSize) {
  ONEBIT_REQUIRE_GPU();
  run_local(1, [&](Communicator& comm) {
    ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
    StreamGuard stream;
    DeviceCollectives coll(comm, stream.get());
    EXPECT_THROW(CudaHalfAllreduce(coll, 10, WirePrecision::kFp32), Error);
    CudaHalfAllreduce ar(coll, 10, WirePrecision::kBf16);
    DeviceArray<float> x(11);
    try {
      ar.average(x.data(), 11);
      ADD_FAILURE() << "11 elements averaged by an exchange built for 10";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("on rank 0"), std::string::npos) << e.what();
    }
  });
}

}  // namespace
}  // namespace onebit::cuda
