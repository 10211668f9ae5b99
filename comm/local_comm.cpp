// The in-process world: ranks are threads that meet at a barrier and copy from each other's buffers.
#include "onebit/local_comm.hpp"

#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#include "onebit/error.hpp"

namespace onebit {
namespace {

// memcpy that accepts the null pointers of empty buffers (memcpy itself may not be given them).
void copy_bytes(void* to, const void* from, size_t n) {
  if (n > 0) std::memcpy(to, from, n);
}

class World {
 public:
  explicit World(int size) : size_(size), posted_(static_cast<size_t>(size)) {}
  int size() const { return size_; }

  // Waits until every rank has arrived; throws if another rank failed or the wait times out.
  void barrier(int rank, std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    const size_t gen = generation_;
    if (++arrived_ == size_) {
      arrived_ = 0;
      ++generation_;
      cv_.notify_all();
      return;
    }
    const bool ok = cv_.wait_for(lock, timeout, [&] { return generation_ != gen || failed_ >= 0; });
    if (generation_ != gen) return;
    if (failed_ >= 0)
      throw Error("local: rank " + std::to_string(rank) + " stopped waiting: rank " +
                  std::to_string(failed_) + " failed");
    ONEBIT_CHECK(ok, "local: rank " << rank << " timed out after " << timeout.count()
                                    << " ms waiting for the other ranks");
  }

  void fail(int rank) {
    std::lock_guard<std::mutex> lock(mu_);
    if (failed_ < 0) failed_ = rank;
    cv_.notify_all();
  }

  int first_failed() {
    std::lock_guard<std::mutex> lock(mu_);
    return failed_;
  }

  // Each collective: post a pointer, meet, read the others' buffers, meet again.
  std::vector<const void*>& posted() { return posted_; }

 private:
  int size_;
  std::mutex mu_;
  std::condition_variable cv_;
  int arrived_ = 0;
  size_t generation_ = 0;
  int failed_ = -1;
  std::vector<const void*> posted_;
};

class LocalCommunicator final : public Communicator {
 public:
  LocalCommunicator(World& world, int rank) : world_(world), rank_(rank) {}
  int rank() const override { return rank_; }
  int size() const override { return world_.size(); }
  std::string backend() const override { return "local"; }

 protected:
  void do_allreduce_sum(std::span<float> data) override {
    // Every rank sums all ranks in rank order into a copy, so all get the same bits.
    std::vector<float> sum(data.size(), 0.0f);
    exchange(data.data(), [&](int, const void* p) {
      const float* x = static_cast<const float*>(p);
      for (size_t i = 0; i < sum.size(); ++i) sum[i] += x[i];
    });
    copy_bytes(data.data(), sum.data(), data.size_bytes());
  }
  void do_alltoall(std::span<const std::byte> send, std::span<std::byte> recv) override {
    const size_t chunk = send.size() / static_cast<size_t>(size());
    exchange(send.data(), [&](int r, const void* p) {
      copy_bytes(recv.data() + r * chunk, static_cast<const std::byte*>(p) + rank_ * chunk, chunk);
    });
  }
  void do_allgather(std::span<const std::byte> send, std::span<std::byte> recv) override {
    exchange(send.data(), [&](int r, const void* p) {
      copy_bytes(recv.data() + r * send.size(), p, send.size());
    });
  }
  void do_broadcast(std::span<std::byte> data, int root) override {
    std::vector<std::byte> copy;
    exchange(data.data(), [&](int r, const void* p) {
      if (r == root && r != rank_) copy.assign(static_cast<const std::byte*>(p),
                                               static_cast<const std::byte*>(p) + data.size());
    });
    if (!copy.empty()) std::memcpy(data.data(), copy.data(), data.size());
  }
  void do_barrier() override { world_.barrier(rank_, timeout()); }

 private:
  template <class Read>
  void exchange(const void* mine, Read read) {
    world_.posted()[static_cast<size_t>(rank_)] = mine;
    world_.barrier(rank_, timeout());
    for (int r = 0; r < size(); ++r) read(r, world_.posted()[static_cast<size_t>(r)]);
    world_.barrier(rank_, timeout());
  }

  World& world_;
  int rank_;
};

}  // namespace

void run_local(int world_size, const std::function<void(Communicator&)>& fn) {
  ONEBIT_CHECK(world_size >= 1, "run_local: world size must be >= 1, got " << world_size);
  World world(world_size);
  std::vector<std::exception_ptr> errors(static_cast<size_t>(world_size));
  std::vector<std::thread> threads;
  for (int r = 0; r < world_size; ++r) {
    threads.emplace_back([&, r] {
      LocalCommunicator comm(world, r);
      try {
        fn(comm);
      } catch (...) {
        errors[static_cast<size_t>(r)] = std::current_exception();
        world.fail(r);
      }
    });
  }
  for (auto& t : threads) t.join();
  // The rank that failed first has the cause; the others only saw it fail.
  const int first = world.first_failed();
  if (first >= 0) std::rethrow_exception(errors[static_cast<size_t>(first)]);
}

}  // namespace onebit
