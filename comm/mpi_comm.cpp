// The Communicator over MPI. Collectives are started non-blocking and polled against the timeout,
// so a lost rank ends this one with an error instead of a hang.
#include "onebit/mpi_comm.hpp"

#include <mpi.h>

#include <chrono>
#include <climits>
#include <string>
#include <thread>

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
    if (owned && !finalized) MPI_Finalize();
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
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "mpi"; }

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
  void wait(MPI_Request& req, const char* op) {
    const auto deadline = std::chrono::steady_clock::now() + timeout();
    for (int spins = 0;; ++spins) {
      int done = 0;
      ONEBIT_MPI_CHECK(MPI_Test(&req, &done, MPI_STATUS_IGNORE));
      if (done) return;
      if (std::chrono::steady_clock::now() > deadline)
        ONEBIT_CHECK(false, "mpi " << op << " on rank " << rank_ << ": no answer from the other ranks within "
                                   << timeout().count() << " ms (a rank died or stalled)");
      if (spins > 1000) std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
  }

  int rank_ = 0, size_ = 1;
};

}  // namespace

bool mpi_available() { return true; }

std::unique_ptr<Communicator> make_mpi_communicator() {
  static MpiSession session;
  return std::make_unique<MpiCommunicator>();
}

}  // namespace onebit
