// Real processes under mpirun: the compressed allreduce and 1-bit LAMB over the MPI backend.
// ctest starts it with mpirun -np 2 and -np 4; every rank runs every test, rank 0 prints.
#include <gtest/gtest.h>

#include <cstring>

#include "../tests/reference_optimizers.hpp"
#include "../tests/simulation.hpp"
#include "onebit/compressed_allreduce.hpp"
#include "onebit/mpi_comm.hpp"
#include "onebit/optimizers.hpp"

namespace onebit {
namespace {

Communicator& world() {
  static std::unique_ptr<Communicator> comm = make_mpi_communicator();
  return *comm;
}

// Every rank's copy of v, gathered, so each rank can check they are all the same bits.
void expect_identical_on_all_ranks(const std::vector<float>& v) {
  Communicator& comm = world();
  std::vector<float> all(v.size() * static_cast<size_t>(comm.size()));
  comm.allgather_values(std::span<const float>(v), std::span<float>(all));
  for (int r = 1; r < comm.size(); ++r)
    ASSERT_EQ(0, std::memcmp(all.data() + r * v.size(), all.data(), v.size() * 4)) << "rank " << r;
}

TEST(Mpi, CompressedAllreduceMatchesSimulation) {
  Communicator& comm = world();
  const int P = comm.size();
  for (size_t n : {size_t{1}, size_t{3}, size_t{1000}, size_t{70001}}) {
    testing::SimulatedAllreduce sim(P, n);
    ThreadPool pool(1);
    CompressedAllreduce ar(comm, pool, n);
    for (int t = 0; t < 4; ++t) {
      std::vector<testing::Vec> x;
      for (int p = 0; p < P; ++p) x.push_back(testing::random_vec(n, 31 * n + 7 * t + p));
      const testing::Vec expected = sim.run(x);
      testing::Vec mine = x[static_cast<size_t>(comm.rank())];
      ASSERT_TRUE(ar.run(mine));
      double diff = 0, mag = 0;
      for (size_t i = 0; i < n; ++i) {
        diff = std::max(diff, std::fabs(static_cast<double>(mine[i]) - expected[i]));
        mag = std::max(mag, std::fabs(static_cast<double>(expected[i])));
      }
      EXPECT_LT(diff, 1e-5 * mag) << "n " << n << " call " << t;
      expect_identical_on_all_ranks(mine);
    }
  }
}

TEST(Mpi, OnebitLambFollowsTheReferenceAndRanksAgree) {
  Communicator& comm = world();
  const int P = comm.size(), steps = 10, freeze = 4;
  const std::vector<size_t> sizes = {500, 33, 2000, 7};
  const FlatLayout layout(sizes);
  auto grad = [&](int t, int p) {
    testing::Vec a = testing::random_vec(layout.total(), 100 + t, 0.01f);
    const testing::Vec b = testing::random_vec(layout.total(), 1000 + 10 * t + p, 0.005f);
    for (size_t i = 0; i < a.size(); ++i) a[i] += b[i];
    return a;
  };
  const testing::Vec w0 = testing::random_vec(layout.total(), 9, 0.05f);
  testing::RefOptions ro;
  ro.lr = 1e-2;
  ro.freeze_step = freeze;
  testing::RefOptimizer ref(sizes, P, ro, testing::DVec(w0.begin(), w0.end()));
  OnebitLambOptions o;
  o.lr = 1e-2f;
  o.freeze_step = freeze;
  OnebitLamb opt(layout, comm, o);
  testing::Vec w = w0;
  for (int t = 0; t < steps; ++t) {
    testing::Vec g = grad(t, comm.rank());
    ASSERT_TRUE(opt.step(w, g));
    std::vector<testing::DVec> all;
    for (int p = 0; p < P; ++p) {
      const testing::Vec gp = grad(t, p);
      all.emplace_back(gp.begin(), gp.end());
    }
    ref.step(all);
    double d = 0, n = 0;
    for (size_t i = 0; i < w.size(); ++i) {
      d += (w[i] - ref.w[i]) * (w[i] - ref.w[i]);
      n += ref.w[i] * ref.w[i];
    }
    EXPECT_LT(std::sqrt(d / n), 1e-4) << "step " << t + 1;
    expect_identical_on_all_ranks(w);
  }
}

}  // namespace
}  // namespace onebit

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  if (onebit::world().rank() != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  return RUN_ALL_TESTS();
}
