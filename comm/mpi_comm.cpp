// The Communicator over MPI. Collectives are started non-blocking and polled against the timeout,
// so a lost rank ends this one with an error instead of a hang; a roll call then names it.
#include "onebit/mpi_comm.hpp"

#include <mpi.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "onebit/error.hpp"

#define ONEBIT_MPI_CHECK(call)                                                          \
  do {                                                                                  \
    const int onebit_mpi_rc_ = (call);                                                  \
    if (onebit_mpi_rc_ != MPI_SUCCESS) {                                                \
      char onebit_mpi_msg_[MPI_MAX_ERROR_STRING];                                       \
      int onebit_mpi_len_ = 0;                                                          \
      MPI_Error_string(onebit_mpi_rc_, onebit_mpi_msg_, &onebit_mpi_len_);              \
      ONEBIT_CHECK(false, "mpi: " #call " failed: " << std::string(onebit_mpi_msg_, onebit_mpi_len_)); \
    }                                                                                   \
  } while (0)

namespace onebit {
namespace {

// Set once a collective failed: the ranks are out of step, and MPI_Finalize, which waits for every
// rank, could hang on the lost one; the process ends without it (mpirun then ends the job).
std::atomic<bool> g_broken{false};

// Finalizes MPI at exit when onebit initialized it.
struct MpiSession {
  MpiSession() {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized) {
      int provided = 0;
      ONEBIT_MPI_CHECK(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided));
      owned = true;
    }
  }
  ~MpiSession() {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (owned && !finalized && !g_broken) MPI_Finalize();
  }
  bool owned = false;
};

int checked_count(size_t n, const char* what) {
  ONEBIT_CHECK(n <= static_cast<size_t>(INT_MAX), "mpi " << what << ": " << n << " elements exceed MPI's int count");
  return static_cast<int>(n);
}

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator() {
    ONEBIT_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank_));
    ONEBIT_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &size_));
    // Its own communicator, so roll-call messages never match anything else.
    ONEBIT_MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &roll_call_comm_));
  }
  ~MpiCommunicator() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized && !g_broken) MPI_Comm_free(&roll_call_comm_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "mpi"; }
  bool any_thread() const override { return false; }  // MPI_THREAD_FUNNELED

 protected:
  void do_allreduce_sum(std::span<float> data) override {
    MPI_Request req;
    ONEBIT_MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, data.data(), checked_count(data.size(), "allreduce"),
                                    MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &req));
    wait(req, "allreduce");
  }
  void do_alltoall(std::span<const std::byte> send, std::span<std::byte> recv) override {
    const int chunk = checked_count(send.size() / static_cast<size_t>(size_), "alltoall");
    MPI_Request req;
    ONEBIT_MPI_CHECK(MPI_Ialltoall(send.data(), chunk, MPI_BYTE, recv.data(), chunk, MPI_BYTE,
                                   MPI_COMM_WORLD, &req));
    wait(req, "alltoall");
  }
  void do_allgather(std::span<const std::byte> send, std::span<std::byte> recv) override {
    const int n = checked_count(send.size(), "allgather");
    MPI_Request req;
    ONEBIT_MPI_CHECK(MPI_Iallgather(send.data(), n, MPI_BYTE, recv.data(), n, MPI_BYTE,
                                    MPI_COMM_WORLD, &req));
    wait(req, "allgather");
  }
  void do_broadcast(std::span<std::byte> data, int root) override {
    MPI_Request req;
    ONEBIT_MPI_CHECK(MPI_Ibcast(data.data(), checked_count(data.size(), "broadcast"), MPI_BYTE, root,
                                MPI_COMM_WORLD, &req));
    wait(req, "broadcast");
  }
  void do_barrier() override {
    MPI_Request req;
    ONEBIT_MPI_CHECK(MPI_Ibarrier(MPI_COMM_WORLD, &req));
    wait(req, "barrier");
  }

 private:
  // The collective's wait and the roll call after it share timeout().
  std::chrono::milliseconds roll_call_window() const {
    return std::clamp(timeout() / 10, std::chrono::milliseconds(500), std::chrono::milliseconds(5000));
  }

  void wait(MPI_Request& req, const char* op) {
    ONEBIT_CHECK(!g_broken, "mpi " << op << " on rank " << rank_ << ": a collective failed earlier, the ranks are out of step");
    const auto deadline = std::chrono::steady_clock::now() + timeout() - roll_call_window();
    for (int spins = 0;; ++spins) {
      int done = 0;
      ONEBIT_MPI_CHECK(MPI_Test(&req, &done, MPI_STATUS_IGNORE));
      if (done) return;
      if (std::chrono::steady_clock::now() > deadline) {
        g_broken = true;
        ONEBIT_CHECK(false, "mpi " << op << " on rank " << rank_ << " of " << size_ << ": no answer within "
                                   << timeout().count() << " ms; " << roll_call());
      }
      if (spins > 1000) std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
  }

  // After a timeout every live rank sends every other one a byte (point to point, beside the stuck
  // collective); the ranks not heard from within the window are named.
  std::string roll_call() {
    const int kTag = 7001;
    std::vector<char> in(static_cast<size_t>(size_)), out(1, 1);
    std::vector<MPI_Request> recvs(static_cast<size_t>(size_), MPI_REQUEST_NULL), sends;
    for (int r = 0; r < size_; ++r) {
      if (r == rank_) continue;
      MPI_Irecv(&in[static_cast<size_t>(r)], 1, MPI_CHAR, r, kTag, roll_call_comm_, &recvs[static_cast<size_t>(r)]);
      sends.emplace_back();
      MPI_Isend(out.data(), 1, MPI_CHAR, r, kTag, roll_call_comm_, &sends.back());
    }
    const auto deadline = std::chrono::steady_clock::now() + roll_call_window();
    std::vector<bool> heard(static_cast<size_t>(size_), false);
    heard[static_cast<size_t>(rank_)] = true;
    while (std::chrono::steady_clock::now() < deadline) {
      bool all = true;
      for (int r = 0; r < size_; ++r) {
        int done = 0;
        if (!heard[static_cast<size_t>(r)] && MPI_Test(&recvs[static_cast<size_t>(r)], &done, MPI_STATUS_IGNORE) == MPI_SUCCESS)
          heard[static_cast<size_t>(r)] = done != 0;
        all = all && heard[static_cast<size_t>(r)];
      }
      if (all) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    // The buffers of unanswered requests stay valid: this process ends without MPI_Finalize.
    static std::vector<std::vector<char>> abandoned;
    abandoned.push_back(std::move(in));
    abandoned.push_back(std::move(out));
    std::ostringstream lost;
    for (int r = 0; r < size_; ++r)
      if (!heard[static_cast<size_t>(r)]) lost << (lost.tellp() ? ", " : "") << "rank " << r;
    if (!lost.tellp()) return "every rank answered a roll call (a rank called a different collective?)";
    return "no answer from " + lost.str() + " to a roll call within " + std::to_string(roll_call_window().count()) +
           " ms (dead or stalled)";
  }

  int rank_ = 0, size_ = 1;
  MPI_Comm roll_call_comm_ = MPI_COMM_NULL;
};

}  // namespace

bool mpi_available() { return true; }

std::unique_ptr<Communicator> make_mpi_communicator() {
  static MpiSession session;
  return std::make_unique<MpiCommunicator>();
}

}  // namespace onebit
