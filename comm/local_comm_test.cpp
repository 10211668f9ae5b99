// The in-process backend: collectives move the right bytes, count them, and never hang.
#include "onebit/local_comm.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <numeric>

#include "onebit/error.hpp"

namespace onebit {
namespace {

TEST(LocalComm, CollectivesMoveTheRightBytes) {
  for (int P : {1, 2, 3, 8}) {
    run_local(P, [&](Communicator& comm) {
      const int r = comm.rank();
      std::vector<float> x(5, static_cast<float>(r + 1));
      comm.allreduce_sum(x);
      EXPECT_EQ(x[4], static_cast<float>(P * (P + 1) / 2));

      std::vector<int> send(static_cast<size_t>(P)), recv(static_cast<size_t>(P));
      for (int j = 0; j < P; ++j) send[j] = 100 * r + j;  // chunk j goes to rank j
      comm.alltoall(std::as_bytes(std::span(send)), std::as_writable_bytes(std::span(recv)));
      for (int j = 0; j < P; ++j) EXPECT_EQ(recv[j], 100 * j + r);

      std::vector<int> all(static_cast<size_t>(P));
      comm.allgather_values(std::span<const int>(&r, 1), std::span<int>(all));
      for (int j = 0; j < P; ++j) EXPECT_EQ(all[j], j);

      int v = r == P - 1 ? 42 : 0;
      comm.broadcast(std::as_writable_bytes(std::span(&v, 1)), P - 1);
      EXPECT_EQ(v, 42);
      comm.barrier();
      // allreduce 20 B + alltoall (P-1)*4 + allgather (P-1)*4 (+ the broadcast root's 4)
      const uint64_t expect = 2 * (P - 1) * 20 / P + 8 * (P - 1) + (P > 1 && r == P - 1 ? 4 : 0);
      EXPECT_EQ(comm.stats().bytes_sent, expect);
    });
  }
}

TEST(LocalComm, AFailedRankEndsTheOthersInsteadOfHanging) {
  const auto t0 = std::chrono::steady_clock::now();
  try {
    run_local(3, [&](Communicator& comm) {
      if (comm.rank() == 1) throw Error("rank 1 broke");
      comm.barrier();
    });
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("rank 1 broke"), std::string::npos) << e.what();
  }
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(10));
}

TEST(LocalComm, AWaitTimesOut) {
  try {
    run_local(2, [&](Communicator& comm) {
      comm.set_timeout(std::chrono::milliseconds(200));
      if (comm.rank() == 0) comm.barrier();  // rank 1 never comes
      else std::this_thread::sleep_for(std::chrono::milliseconds(600));
    });
    FAIL() << "expected a timeout";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("timed out"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace onebit
