// The compressed allreduce against the simulation, over ranks as threads (in-process backend).
#include "onebit/compressed_allreduce.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <mutex>

#include "../tests/simulation.hpp"
#include "onebit/error.hpp"
#include "onebit/local_comm.hpp"

namespace onebit {
namespace {

using testing::SimulatedAllreduce;
using testing::Vec;

// Max |a-b| relative to the max |b|.
double rel_diff(const Vec& a, const Vec& b) {
  double d = 0, m = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    d = std::max(d, std::fabs(static_cast<double>(a[i]) - b[i]));
    m = std::max(m, std::fabs(static_cast<double>(b[i])));
  }
  return m > 0 ? d / m : d;
}

struct Case {
  int world;
  size_t n;
  size_t group = 0;  // scale group (0: one scale per worker and per chunk)
};

class AllreduceVsSimulation : public ::testing::TestWithParam<Case> {};

TEST_P(AllreduceVsSimulation, MatchesSimulationAndIsIdenticalOnAllRanks) {
  const int P = GetParam().world;
  const size_t n = GetParam().n, group = GetParam().group;
  const int calls = 6;
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  SimulatedAllreduce sim(P, n, group);
  std::vector<Vec> expected;
  for (int t = 0; t < calls; ++t) {
    std::vector<Vec> x;
    for (int p = 0; p < P; ++p) x.push_back(testing::random_vec(n, seed + 1000 * t + p));
    expected.push_back(sim.run(x));
  }
  std::vector<std::vector<Vec>> got(static_cast<size_t>(P));
  run_local(P, [&](Communicator& comm) {
    ThreadPool pool(2);
    CompressedAllreduce ar(comm, pool, n, {}, group);
    for (int t = 0; t < calls; ++t) {
      Vec x = testing::random_vec(n, seed + 1000 * t + comm.rank());
      ASSERT_TRUE(ar.run(x));
      got[static_cast<size_t>(comm.rank())].push_back(x);
    }
  });
  for (int t = 0; t < calls; ++t) {
    // Scales are sums in a different order than the simulation's: equal to float rounding.
    EXPECT_LT(rel_diff(got[0][t], expected[t]), 1e-5) << "call " << t;
    for (int p = 1; p < P; ++p)
      EXPECT_TRUE(testing::bitwise_equal(got[p][t], got[0][t]))
          << "rank " << p << " differs from rank 0 at call " << t;
  }
}

INSTANTIATE_TEST_SUITE_P(Sizes, AllreduceVsSimulation,
                         ::testing::Values(Case{1, 1}, Case{1, 1000}, Case{2, 0}, Case{2, 65},
                                           Case{3, 1009}, Case{4, 3}, Case{4, 100003},
                                           Case{8, 5}, Case{8, 4099}, Case{3, 40961},
                                           // Scale groups: shorter than a chunk, not dividing it, longer.
                                           Case{1, 1000, 64}, Case{2, 0, 64}, Case{2, 65, 64},
                                           Case{3, 1009, 128}, Case{4, 100003, 2048}, Case{8, 4099, 192},
                                           Case{3, 40961, 4096}, Case{2, 1000, 1 << 20}),
                         [](const auto& info) {
                           std::string name = "P" + std::to_string(info.param.world);
                           name += "_n" + std::to_string(info.param.n);
                           if (info.param.group) name += "_group" + std::to_string(info.param.group);
                           return name;
                         });

class Grouped : public ::testing::TestWithParam<size_t> {};

// Error feedback loses nothing: over many calls, sum of results + average worker error + server
// error equals the average of the inputs' sums.
TEST_P(Grouped, ErrorFeedbackIdentity) {
  const size_t group = GetParam();
  const int P = 4, calls = 200;
  const size_t n = 777;
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::vector<double> input_sum(n, 0.0), output_sum(n, 0.0), residual(n, 0.0);
  std::mutex mu;
  run_local(P, [&](Communicator& comm) {
    ThreadPool pool(1);
    CompressedAllreduce ar(comm, pool, n, {}, group);
    std::vector<double> in(n, 0.0), out(n, 0.0);
    for (int t = 0; t < calls; ++t) {
      Vec x = testing::random_vec(n, seed + 7919 * t + comm.rank());
      for (size_t i = 0; i < n; ++i) in[i] += x[i];
      ASSERT_TRUE(ar.run(x));
      for (size_t i = 0; i < n; ++i) out[i] += x[i];
    }
    const Vec we = ar.worker_error(), se = ar.server_error();
    const size_t begin = std::min(n, comm.rank() * ar.chunk_size());
    std::lock_guard<std::mutex> lock(mu);
    for (size_t i = 0; i < n; ++i) {
      input_sum[i] += in[i] / P;
      residual[i] += we[i] / P;
      if (comm.rank() == 0) output_sum[i] = out[i];
    }
    for (size_t i = 0; i < se.size(); ++i) residual[begin + i] += se[i];
  });
  for (size_t i = 0; i < n; ++i)
    ASSERT_NEAR(output_sum[i] + residual[i], input_sum[i], 1e-3) << "element " << i;
  // And the residual stays bounded: compression error does not accumulate.
  double max_res = 0;
  for (double r : residual) max_res = std::max(max_res, std::fabs(r));
  EXPECT_LT(max_res, 20.0);
}

TEST_P(Grouped, NonFiniteOnOneRankSkipsOnAllRanksAndKeepsState) {
  const size_t group = GetParam();
  const int P = 3;
  const size_t n = 300;
  run_local(P, [&](Communicator& comm) {
    ThreadPool pool(1);
    CompressedAllreduce ar(comm, pool, n, {}, group);
    Vec x = testing::random_vec(n, 11 + comm.rank());
    ASSERT_TRUE(ar.run(x));
    const Vec err_before = ar.worker_error(), serr_before = ar.server_error();
    Vec bad = testing::random_vec(n, 12 + comm.rank());
    if (comm.rank() == 1) bad[17] = std::nanf("");
    const Vec bad_copy = bad;
    EXPECT_FALSE(ar.run(bad));
    EXPECT_EQ(0, std::memcmp(bad.data(), bad_copy.data(), n * sizeof(float)))
        << "a skipped call must leave its input alone";
    EXPECT_EQ(ar.worker_error(), err_before);
    EXPECT_EQ(ar.server_error(), serr_before);
    Vec inf = testing::random_vec(n, 13);
    if (comm.rank() == 2) inf[0] = INFINITY;
    EXPECT_FALSE(ar.run(inf));
  });
}

TEST_P(Grouped, SetErrorsRestoresTheTrajectoryBitForBit) {
  const size_t group = GetParam();
  const int P = 2;
  const size_t n = 1000;
  run_local(P, [&](Communicator& comm) {
    ThreadPool pool(1);
    CompressedAllreduce a(comm, pool, n, {}, group), b(comm, pool, n, {}, group);
    for (int t = 0; t < 3; ++t) {
      Vec x = testing::random_vec(n, 100 + t + 10 * comm.rank());
      ASSERT_TRUE(a.run(x));
    }
    b.set_errors(a.worker_error(), a.server_error());
    for (int t = 3; t < 6; ++t) {
      Vec x = testing::random_vec(n, 100 + t + 10 * comm.rank()), y = x;
      ASSERT_TRUE(a.run(x));
      ASSERT_TRUE(b.run(y));
      ASSERT_EQ(0, std::memcmp(x.data(), y.data(), n * sizeof(float))) << "call " << t;
    }
  });
}

INSTANTIATE_TEST_SUITE_P(ScaleGroups, Grouped, ::testing::Values(0, 64, 256),
                         [](const auto& info) { return "group" + std::to_string(info.param); });

TEST(CompressedAllreduce, SendsAboutOneBitPerValue) {
  const int P = 4;
  const size_t n = 1 << 20;
  run_local(P, [&](Communicator& comm) {
    ThreadPool pool(1);
    CompressedAllreduce ar(comm, pool, n);
    Vec x = testing::random_vec(n, 5);
    comm.reset_stats();
    ASSERT_TRUE(ar.run(x));
    const double compressed = static_cast<double>(comm.stats().bytes_sent);
    comm.reset_stats();
    comm.allreduce_sum(x);
    const double fp32 = static_cast<double>(comm.stats().bytes_sent);
    // 2(P-1)/P * n/8 bytes plus two tiny scale exchanges, against 2(P-1)/P * 4n.
    EXPECT_NEAR(compressed, 2.0 * (P - 1) / P * n / 8 + 2 * 4 * (P - 1), 1.0);
    EXPECT_GT(fp32 / compressed, 31.9);
  });
}

// With scale groups each chunk's bits carry a scale per group (and the worker's a finiteness flag):
// 4 bytes per group more in each of the two phases.
TEST(CompressedAllreduce, ScaleGroupsCostFourBytesPerGroupAndPhase) {
  const int P = 4;
  const size_t n = 1 << 20, group = 2048;
  run_local(P, [&](Communicator& comm) {
    ThreadPool pool(1);
    CompressedAllreduce ar(comm, pool, n, {}, group);
    Vec x = testing::random_vec(n, 5);
    comm.reset_stats();
    ASSERT_TRUE(ar.run(x));
    const double groups_per_chunk = static_cast<double>(n) / P / group;
    EXPECT_DOUBLE_EQ(static_cast<double>(comm.stats().bytes_sent),
                     2.0 * (P - 1) * (n / P / 8.0 + 4 * groups_per_chunk) + 2 * 4 * (P - 1));
  });
}

// Layers of very different size share one worker scale in docs/algorithm.md §2; groups give each its own, so the
// small layer's values are not rounded up to the large one's magnitude.
TEST(CompressedAllreduce, ScaleGroupsFollowLocalMagnitudes) {
  const int P = 2;
  const size_t n = 8192;
  std::vector<double> err(2, 0.0);
  for (size_t group : {size_t{0}, size_t{1024}}) {
    run_local(P, [&](Communicator& comm) {
      ThreadPool pool(1);
      CompressedAllreduce ar(comm, pool, n, {}, group);
      Vec x = testing::random_vec(n, 21 + comm.rank());
      for (size_t i = 0; i < n / 2; ++i) x[i] *= 1e-3f;  // a quiet half next to a loud one
      ASSERT_TRUE(ar.run(x));
      if (comm.rank() != 0) return;
      double e = 0;
      for (size_t i = 0; i < n / 2; ++i) e += std::fabs(x[i]);
      err[group ? 1 : 0] = e / (n / 2);
    });
  }
  // One shared worker scale (the RMS over all n, ~0.7) decodes the quiet half at the loud half's
  // magnitude, and the server of that half's chunk averages those; group scales keep it at ~1e-3.
  EXPECT_GT(err[0], 0.1);
  EXPECT_LT(err[1], 0.01);
}

TEST(CompressedAllreduce, RejectsAWrongSize) {
  run_local(1, [&](Communicator& comm) {
    ThreadPool pool(1);
    CompressedAllreduce ar(comm, pool, 10);
    Vec x(11);
    EXPECT_THROW(ar.run(x), Error);
  });
}

}  // namespace
}  // namespace onebit
