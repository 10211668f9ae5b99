// Overlap: two threads stepping through the same numbered stages of one call, the caller (who talks
// to the communicator, as MPI's funneled mode wants) and a helper (who computes); each waits for
// the stages of the other that it needs. Internal to the compressed allreduce's pipeline.
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
            set(helper_done_, kFailed);
          }
        }) {}
  // Unwinding (the caller's collective threw): tells the helper to stop waiting, then joins it.
  ~Overlap() {
    if (!thread_.joinable()) return;
    set(caller_done_, kFailed);
    thread_.join();
  }
  Overlap(const Overlap&) = delete;
  Overlap& operator=(const Overlap&) = delete;

  // The caller finished its first `stages` stages / the helper its first `stages`.
  void caller_finished(int stages) { set(caller_done_, stages); }
  void helper_finished(int stages) { set(helper_done_, stages); }

  // Caller: waits until the helper finished `stages` stages; rethrows the helper's exception.
  void wait_helper(int stages) {
    if (!wait(helper_done_, stages)) rethrow();
  }
  // Helper: waits until the caller finished `stages` stages; false when the caller gave up.
  bool wait_caller(int stages) { return wait(caller_done_, stages); }

  // Caller, at the end: joins the helper and rethrows its exception, if any.
  void join() {
    thread_.join();
    if (error_) std::rethrow_exception(error_);
  }

 private:
  static constexpr int kFailed = -1;
  static void set(std::atomic<int>& a, int v) {
    a.store(v);
    a.notify_all();
  }
  static bool wait(std::atomic<int>& a, int stages) {
    for (;;) {
      const int v = a.load();
      if (v == kFailed) return false;
      if (v >= stages) return true;
      a.wait(v);
    }
  }
  void rethrow() {
    thread_.join();
    std::rethrow_exception(error_);
  }

  std::atomic<int> caller_done_{0}, helper_done_{0};
  std::exception_ptr error_;
  std::thread thread_;  // last: started once the rest exists
};

}  // namespace onebit
