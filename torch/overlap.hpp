// Overlap with backward: the exchange of a step that averages the gradient (LAMB's steps, the
// warmup's) runs in buckets of whole parameters, taken from the last parameter back (backward
// produces gradients in about that order), each started on an exchange thread as soon as backward
// has accumulated every gradient in it. Buckets start strictly in order, so every rank makes the
// same calls in the same order; each is Optimizer::average_ahead on its range of the flat gradient.
// The armed backward ends (an autograd final callback, as DDP's) once every bucket is exchanged, so
// when backward() returns, the gradients hold the average over the ranks.
#pragma once
#include <torch/csrc/autograd/function.h>

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "onebit/optimizers.hpp"
#include "onebit/torch_optimizers.hpp"

namespace onebit {

class BackwardOverlap {
 public:
  // Hooks every parameter of `flat` that takes a gradient (a post hook of its grad accumulator);
  // buckets hold about bucket_bytes of fp32 gradient (at least one parameter each).
  BackwardOverlap(TorchFlatParams& flat, Optimizer& core, size_t bucket_bytes);
  // Removes the hooks and joins the exchange thread (after the bucket it is exchanging, if any; the
  // buckets still queued are dropped).
  ~BackwardOverlap();
  BackwardOverlap(const BackwardOverlap&) = delete;
  BackwardOverlap& operator=(const BackwardOverlap&) = delete;

  // Lets the next backward start the buckets; false (and nothing armed) when the core's next step
  // does not average the gradient alone. Call it before the backward whose gradients the step uses.
  bool arm();
  // Takes the arming back before the backward it was for (an error once a bucket has started).
  void disarm();
  // Armed: starts the buckets backward did not, waits for all, and disarms; the flat gradient then
  // holds the average, and the core's next step exchanges nothing. Rethrows the exchange's error.
  // The armed backward calls it as it ends. Returns the report of the exchange finished since the
  // last call (empty if none).
  OverlapReport finish();

 private:
  struct Bucket {
    size_t first = 0, last = 0;  // the range of the flat buffer
    size_t params = 0;           // hooked parameters in it
  };
  void on_gradient(size_t param);
  void launch_ready();  // under mu_
  void exchange_loop();

  TorchFlatParams& flat_;
  Optimizer& core_;
  std::vector<Bucket> buckets_;  // in launch order: buckets_[0] ends the flat buffer
  std::vector<size_t> bucket_of_;  // per parameter; SIZE_MAX: takes no gradient
  std::vector<std::shared_ptr<torch::autograd::Node>> accumulators_;  // kept alive: they hold the hooks
  std::vector<uintptr_t> hook_keys_;

  std::mutex mu_;
  std::condition_variable cv_;
  bool armed_ = false, stop_ = false, callback_queued_ = false;
  std::vector<char> ready_;        // per parameter, this backward
  std::vector<size_t> waiting_;    // per bucket: hooked parameters not ready yet
  size_t launched_ = 0, done_ = 0;
  std::deque<size_t> queue_;
  OverlapReport report_, finished_;
  std::exception_ptr error_;
  std::thread thread_;  // last: started once the rest exists
};

}  // namespace onebit
