// run()'s pipeline (compression overlapped with the all-to-all, the worker scales in its last stage) gives
// the same bits as the plain halves compress + exchange + decode, which the simulation tests check.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "../tests/simulation.hpp"
#include "onebit/compressed_allreduce.hpp"
#include "onebit/local_comm.hpp"

namespace onebit {
namespace {

using testing::Vec;

struct Case {
  int world;
  size_t n;
  bool layers;  // odd layer bounds: pieces that share a byte of sign bits inside one block
  size_t group = 0;  // scale group
};

class Pipeline : public ::testing::TestWithParam<Case> {};

TEST_P(Pipeline, SameBitsAsThePlainHalves) {
  // Plain copies, not structured bindings: the lambda below captures them (clang 14 cannot).
  const Case c = GetParam();
  const int P = c.world;
  const size_t n = c.n;
  const bool layers = c.layers;
  ASSERT_GT(CompressedAllreduce::pipeline_stages(n, P), 1) << "the case must exercise the pipeline";
  std::vector<size_t> bounds;
  if (layers)
    for (size_t b = 0; b < n; b += n / 7 + 13) bounds.push_back(b);
  if (layers) bounds.push_back(n);
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  run_local(P, [&](Communicator& comm) {
    ThreadPool pool(2);
    CompressedAllreduce piped(comm, pool, n, bounds, c.group), plain(comm, pool, n, bounds, c.group);
    for (int t = 0; t < 3; ++t) {
      Vec x = testing::random_vec(n, seed + 1000 * t + comm.rank());
      Vec y = x;
      // Call 1: a non-finite value on the last rank; every rank skips, nothing changes.
      if (t == 1 && comm.rank() == P - 1) x[n / 2] = y[n / 2] = std::nanf("");
      const bool ok = piped.run(x);
      const bool plain_ok = plain.compress(y);
      ASSERT_EQ(ok, plain_ok);
      ASSERT_EQ(ok, t != 1);
      if (!ok) continue;
      plain.exchange();
      plain.decode(y);
      ASSERT_TRUE(testing::bitwise_equal(x, y)) << "rank " << comm.rank() << " call " << t;
      ASSERT_TRUE(testing::bitwise_equal(piped.worker_error(), plain.worker_error())) << "rank " << comm.rank();
      ASSERT_TRUE(testing::bitwise_equal(piped.server_error(), plain.server_error())) << "rank " << comm.rank();
    }
  });
}

INSTANTIATE_TEST_SUITE_P(Sizes, Pipeline,
                         ::testing::Values(Case{2, 7000001, false}, Case{3, 5000011, true}, Case{1, 3300007, false},
                                           Case{3, 5000011, true, 2048}, Case{2, 3300007, false, 320}),
                         [](const auto& info) {
                           std::string name = "P";  // built by appends: GCC 12 warns on "P" + string
                           name += std::to_string(info.param.world);
                           name += "_n";
                           name += std::to_string(info.param.n);
                           if (info.param.layers) name += "_layers";
                           if (info.param.group) name += "_group" + std::to_string(info.param.group);
                           return name;
                         });

}  // namespace
}  // namespace onebit
