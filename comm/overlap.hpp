// Overlap: a helper thread that computes numbered stages while the caller (who talks to the
// communicator, as MPI's funneled mode wants) sends each one as soon as it is done. Internal to the
// compressed allreduce's pipeline.
#pragma once
#include <atomic>
#include <exception>
#include <functional>
#include <thread>

namespace onebit {

class Overlap {
 public:
  // Starts helper(*this) on its own thread.
  explicit Overlap(std::function<void(Overlap&)> helper)
      : thread_([this, helper = std::move(helper)] {
          try {
            helper(*this);
          } catch (...) {
            error_ = std::current_exception();
            set(kFailed);
          }
        }) {}
  // Unwinding (the caller's collective threw): the helper finishes its computing, then joins.
  ~Overlap() {
    if (thread_.joinable()) thread_.join();
  }
  Overlap(const Overlap&) = delete;
  Overlap& operator=(const Overlap&) = delete;

  // Helper: its first `stages` stages are done.
  void helper_finished(int stages) { set(stages); }

  // Caller: waits until the helper finished `stages` stages; rethrows the helper's exception.
  void wait_helper(int stages) {
    for (;;) {
      const int v = done_.load();
      if (v == kFailed) {
        thread_.join();
        std::rethrow_exception(error_);
      }
      if (v >= stages) return;
      done_.wait(v);
    }
  }

  // Caller, at the end: joins the helper and rethrows its exception, if any.
  void join() {
    thread_.join();
    if (error_) std::rethrow_exception(error_);
  }

 private:
  static constexpr int kFailed = -1;
  void set(int v) {
    done_.store(v);
    done_.notify_all();
  }

  std::atomic<int> done_{0};
  std::exception_ptr error_;
  std::thread thread_;  // last: started once the rest exists
};

}  // namespace onebit
