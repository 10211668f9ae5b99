// Communicator: the seam between onebit's algorithms and a collective engine (MPI, NCCL, c10d, threads).
#pragma once
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

namespace onebit {

// What one rank put on and took off the wire. Bytes are counted as the bandwidth-optimal algorithm
// moves them (ring allreduce: 2(P-1)/P of the buffer; all-to-all and all-gather: (P-1) chunks), so
// the numbers compare across engines whatever algorithm an engine picks inside.
struct CommStats {
  uint64_t bytes_sent = 0;
  uint64_t bytes_received = 0;
  uint64_t calls = 0;
  double seconds = 0;  // wall time spent inside collectives
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string backend() const = 0;
  // True when the buffers given must be device (GPU) memory.
  virtual bool device_memory() const { return false; }
  // True when any thread may make the calls, one call at a time (an exchange overlapped with
  // backward runs on a thread of its own); false for MPI, which onebit initialises FUNNELED.
  virtual bool any_thread() const { return true; }

  // Element-wise sum over all ranks, in place.
  void allreduce_sum(std::span<float> data);
  // send holds size() equal chunks; chunk j goes to rank j, and recv's chunk j comes from rank j.
  void alltoall(std::span<const std::byte> send, std::span<std::byte> recv);
  // Every rank's send (equal sizes) lands in recv at rank * send.size().
  void allgather(std::span<const std::byte> send, std::span<std::byte> recv);
  void broadcast(std::span<std::byte> data, int root);
  void barrier();

  template <class T>
  void allgather_values(std::span<const T> send, std::span<T> recv) {
    allgather(std::as_bytes(send), std::as_writable_bytes(recv));
  }

  const CommStats& stats() const { return stats_; }
  void reset_stats() { stats_ = {}; }

  // Every wait inside a collective ends by this deadline with an onebit::Error naming the rank.
  std::chrono::milliseconds timeout() const { return timeout_; }
  void set_timeout(std::chrono::milliseconds t) { timeout_ = t; }

 protected:
  virtual void do_allreduce_sum(std::span<float> data) = 0;
  virtual void do_alltoall(std::span<const std::byte> send, std::span<std::byte> recv) = 0;
  virtual void do_allgather(std::span<const std::byte> send, std::span<std::byte> recv) = 0;
  virtual void do_broadcast(std::span<std::byte> data, int root) = 0;
  virtual void do_barrier() = 0;

 private:
  template <class F>
  void timed(uint64_t sent, uint64_t received, F&& f);

  CommStats stats_;
  std::chrono::milliseconds timeout_{60000};
};

}  // namespace onebit
