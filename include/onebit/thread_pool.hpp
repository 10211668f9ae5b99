// ThreadPool: runs one function on T threads (the caller is thread 0) for the CPU kernels.
#pragma once
#include <condition_variable>
#include <cstddef>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace onebit {

class ThreadPool {
 public:
  explicit ThreadPool(int threads = 1);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int threads() const { return threads_; }

  // Calls fn(t) for t in [0, threads()) concurrently and returns when all are done. The first
  // exception thrown by any fn is rethrown here.
  void run(const std::function<void(int)>& fn);

  // Splits [0, n) into threads() contiguous ranges and calls fn(begin, end) for each non-empty one.
  void for_range(size_t n, const std::function<void(size_t, size_t)>& fn);

 private:
  void worker(int t);

  int threads_;
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable start_cv_, done_cv_;
  const std::function<void(int)>* job_ = nullptr;
  size_t generation_ = 0;
  int pending_ = 0;
  bool stop_ = false;
  std::exception_ptr error_;
};

}  // namespace onebit
