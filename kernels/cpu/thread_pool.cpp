// A fixed set of worker threads that run one function at a time; the caller is thread 0.
#include "onebit/thread_pool.hpp"

#include "onebit/error.hpp"

namespace onebit {

ThreadPool::ThreadPool(int threads) : threads_(threads) {
  ONEBIT_CHECK(threads >= 1, "thread pool: threads must be >= 1, got " << threads);
  for (int t = 1; t < threads; ++t) workers_.emplace_back([this, t] { worker(t); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  start_cv_.notify_all();
  for (auto& w : workers_) w.join();
}

void ThreadPool::worker(int t) {
  size_t seen = 0;
  for (;;) {
    const std::function<void(int)>* job;
    {
      std::unique_lock<std::mutex> lock(mu_);
      start_cv_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      job = job_;
    }
    std::exception_ptr err;
    try {
      (*job)(t);
    } catch (...) {
      err = std::current_exception();
    }
    std::lock_guard<std::mutex> lock(mu_);
    if (err && !error_) error_ = err;
    if (--pending_ == 0) done_cv_.notify_one();
  }
}

void ThreadPool::run(const std::function<void(int)>& fn) {
  if (threads_ == 1) {
    fn(0);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    job_ = &fn;
    pending_ = threads_ - 1;
    error_ = nullptr;
    ++generation_;
  }
  start_cv_.notify_all();
  std::exception_ptr err;
  try {
    fn(0);
  } catch (...) {
    err = std::current_exception();
  }
  std::unique_lock<std::mutex> lock(mu_);
  done_cv_.wait(lock, [&] { return pending_ == 0; });
  if (!err) err = error_;
  if (err) std::rethrow_exception(err);
}

void ThreadPool::for_range(size_t n, const std::function<void(size_t, size_t)>& fn) {
  if (n == 0) return;
  const size_t T = static_cast<size_t>(threads_);
  if (T == 1 || n == 1) {
    fn(0, n);
    return;
  }
  run([&](int t) {
    const size_t b = n * static_cast<size_t>(t) / T, e = n * (static_cast<size_t>(t) + 1) / T;
    if (b < e) fn(b, e);
  });
}

}  // namespace onebit
