// The heartbeat and the post-mortem of a failed collective (see onebit/torch_watchdog.hpp).
#include "onebit/torch_watchdog.hpp"

#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <charconv>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "onebit/error.hpp"

namespace onebit {
namespace {

constexpr auto kBeat = kDiagnosisWindow / 3;
constexpr std::chrono::milliseconds kStoreTimeout{5000};  // a beat's write, so the thread always stops

std::string first_line(std::string s) {
  if (auto nl = s.find('\n'); nl != std::string::npos) s.resize(nl);
  return s;
}

struct Beat {
  bool seen = false, failed = false;
  uint64_t count = 0, entered = 0;
};

// "<count> <entered>", as beat_once writes it. Parsed without iostreams: built by a GCC that links
// its C++ runtime statically (the GPU machine's), a number read through a stream here freed a
// locale that the module's private runtime copy did not own, and the interpreter aborted.
bool parse_beat(std::string_view text, Beat& b) {
  const char* end = text.data() + text.size();
  auto [p, ec] = std::from_chars(text.data(), end, b.count);
  if (ec != std::errc() || p == end || *p != ' ') return false;
  auto [q, ec2] = std::from_chars(p + 1, end, b.entered);
  return ec2 == std::errc() && q == end;
}

void append_rank(std::string& list, int r) { list += (list.empty() ? "rank " : ", rank ") + std::to_string(r); }

struct Diagnosis {
  std::string text;
  std::vector<int> healthy;  // alive and in this collective: they will fail too, and say so
};

class WatchedCommunicator final : public Communicator {
 public:
  WatchedCommunicator(std::shared_ptr<Communicator> inner, const StoreConnector& connect, std::string prefix)
      : inner_(std::move(inner)), prefix_(std::move(prefix)) {
    set_timeout(inner_->timeout());
    beat_store_ = connect();
    look_store_ = connect();
    // Neither may hang on a frozen rank 0 (the store's host).
    look_store_->setTimeout(kDiagnosisWindow);
    beat_store_->setTimeout(kStoreTimeout);
    beat_once(0);
    thread_ = std::thread([this] { beat_loop(); });
  }
  ~WatchedCommunicator() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
  std::string backend() const override { return inner_->backend(); }
  bool device_memory() const override { return inner_->device_memory(); }
  bool any_thread() const override { return inner_->any_thread(); }

 protected:
  void do_allreduce_sum(std::span<float> data) override { watched([&] { inner_->allreduce_sum(data); }); }
  void do_alltoall(std::span<const std::byte> send, std::span<std::byte> recv) override {
    watched([&] { inner_->alltoall(send, recv); });
  }
  void do_allgather(std::span<const std::byte> send, std::span<std::byte> recv) override {
    watched([&] { inner_->allgather(send, recv); });
  }
  void do_broadcast(std::span<std::byte> data, int root) override {
    watched([&] { inner_->broadcast(data, root); });
  }
  void do_barrier() override { watched([&] { inner_->barrier(); }); }

 private:
  std::string key(int rank) const { return prefix_ + "/heartbeat/" + std::to_string(rank); }
  std::string failed_key(int rank) const { return prefix_ + "/failed/" + std::to_string(rank); }

  template <class F>
  void watched(F f) {
    entered_.fetch_add(1);
    inner_->set_timeout(timeout() > 2 * kDiagnosisWindow ? timeout() - kDiagnosisWindow : timeout());
    try {
      f();
    } catch (const Error& e) {
      const Diagnosis d = diagnose();
      const std::string what = std::string(e.what()) + "; " + d.text;
      try {
        look_store_->set(failed_key(rank()), std::vector<uint8_t>{1});
        // Rank 0 hosts the store: it stays until the healthy ranks have looked, or they would
        // find the store gone and blame rank 0.
        if (rank() == 0) wait_for_failed(d.healthy);
      } catch (const std::exception&) {
      }
      throw Error(what);
    }
  }

  void wait_for_failed(const std::vector<int>& ranks) {
    const auto deadline = std::chrono::steady_clock::now() + timeout();
    for (int r : ranks)
      while (!look_store_->check({failed_key(r)}) && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }

  void beat_once(uint64_t n) {
    const std::string v = std::to_string(n) + " " + std::to_string(entered_.load());
    beat_store_->set(key(rank()), std::vector<uint8_t>(v.begin(), v.end()));
  }

  void beat_loop() {
    std::unique_lock<std::mutex> lock(mu_);
    for (uint64_t n = 1; !cv_.wait_for(lock, kBeat, [this] { return stop_; }); ++n) {
      try {
        beat_once(n);
      } catch (const std::exception&) {
        // The store is gone or slow (rank 0 ended, died, or is frozen): the next beat tries again.
      }
    }
  }

  std::vector<Beat> look() {
    std::vector<Beat> beats(static_cast<size_t>(size()));
    for (int r = 0; r < size(); ++r) {
      if (r == rank() || !look_store_->check({key(r)})) continue;
      const std::vector<uint8_t> v = look_store_->get(key(r));
      Beat& b = beats[static_cast<size_t>(r)];
      b.seen = parse_beat(std::string_view(reinterpret_cast<const char*>(v.data()), v.size()), b);
      b.failed = look_store_->check({failed_key(r)});
    }
    return beats;
  }

  // Who is gone, in words, for the error of a failed collective. A rank that ended after posting
  // its own failure is not lost.
  Diagnosis diagnose() {
    std::vector<Beat> before, after;
    try {
      before = look();
      std::this_thread::sleep_for(kDiagnosisWindow);
      after = look();
    } catch (const std::exception& e) {
      return {"rank 0 is lost: the job's store on rank 0 does not answer (" + first_line(e.what()) + ")", {}};
    }
    Diagnosis d;
    std::string dead, stalled;
    for (int r = 0; r < size(); ++r) {
      const Beat &a = before[static_cast<size_t>(r)], &b = after[static_cast<size_t>(r)];
      if (r == rank() || b.failed) continue;
      if (!b.seen || b.count == a.count) append_rank(dead, r);
      else if (b.entered < entered_.load()) append_rank(stalled, r);
      else d.healthy.push_back(r);
    }
    if (!dead.empty())
      d.text = "lost: " + dead + " (no heartbeat for " + std::to_string(kDiagnosisWindow.count()) +
               " ms: dead or frozen)";
    if (!stalled.empty())
      d.text += (dead.empty() ? "" : "; ") + ("stalled: " + stalled) + " (alive, but has not reached this collective)";
    if (d.text.empty()) d.text = "every other rank's heartbeat is alive and has reached this collective";
    return d;
  }

  std::shared_ptr<Communicator> inner_;
  std::string prefix_;
  c10::intrusive_ptr<c10d::Store> beat_store_, look_store_;
  std::atomic<uint64_t> entered_{0};
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace

StoreConnector tcp_store_connector(std::string host, int port, std::chrono::milliseconds timeout) {
  ONEBIT_CHECK(port > 0 && port < 65536, "onebit watch_ranks: store port " << port << " is not a TCP port");
  return [host = std::move(host), port, timeout]() -> c10::intrusive_ptr<c10d::Store> {
    c10d::TCPStoreOptions o;
    o.port = static_cast<uint16_t>(port);
    o.isServer = false;
    o.waitWorkers = false;  // not a worker of the rendezvous count
    o.timeout = timeout;
    return c10::make_intrusive<c10d::TCPStore>(host, o);
  };
}

std::shared_ptr<Communicator> watch_ranks(std::shared_ptr<Communicator> inner, const StoreConnector& connect,
                                          const std::string& prefix) {
  if (inner->size() == 1) return inner;
  return std::make_shared<WatchedCommunicator>(std::move(inner), connect, prefix);
}

}  // namespace onebit
