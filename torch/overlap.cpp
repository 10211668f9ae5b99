// Overlap with backward (see overlap.hpp).
#include "overlap.hpp"

#include <torch/csrc/autograd/engine.h>
#include <torch/csrc/autograd/utils/lambda_post_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <algorithm>
#include <chrono>
#include <limits>

#include "onebit/error.hpp"

namespace onebit {
namespace {
using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }
constexpr size_t kNoBucket = std::numeric_limits<size_t>::max();
}  // namespace

BackwardOverlap::BackwardOverlap(TorchFlatParams& flat, Optimizer& core, size_t bucket_bytes)
    : flat_(flat), core_(core), bucket_of_(flat.tensors().size(), kNoBucket), ready_(flat.tensors().size(), 0) {
  ONEBIT_CHECK(bucket_bytes >= sizeof(float), "onebit overlap: a bucket of " << bucket_bytes << " bytes holds no gradient");
  const FlatLayout& layout = flat.layout();
  // Buckets from the last parameter back, about bucket_bytes of whole parameters each; together
  // they tile the flat buffer, [0, total()), so that their averages make the whole one.
  for (size_t i = flat.tensors().size(); i-- > 0;) {
    const size_t end = buckets_.empty() ? layout.total() : buckets_.back().first;
    if (buckets_.empty() || (buckets_.back().params > 0 && (buckets_.back().last - layout[i].offset) * sizeof(float) > bucket_bytes))
      buckets_.push_back({end, end, 0});
    buckets_.back().first = i == 0 ? 0 : layout[i].offset;
    std::shared_ptr<torch::autograd::Node> acc = torch::autograd::impl::grad_accumulator(flat.tensors()[i]);
    if (!acc) continue;  // no gradient ever: its range is exchanged as it is
    bucket_of_[i] = buckets_.size() - 1;
    ++buckets_.back().params;
    hook_keys_.push_back(acc->add_post_hook(std::make_unique<torch::autograd::utils::LambdaPostHook>(
        [this, i](const torch::autograd::variable_list& outputs, const torch::autograd::variable_list&) {
          on_gradient(i);
          return outputs;
        })));
    accumulators_.push_back(std::move(acc));
  }
  ONEBIT_CHECK(!accumulators_.empty(), "onebit overlap: no parameter takes a gradient (requires_grad), so no "
                                        "backward can start the exchange");
  waiting_.assign(buckets_.size(), 0);
  thread_ = std::thread([this] { exchange_loop(); });
}

BackwardOverlap::~BackwardOverlap() {
  for (size_t k = 0; k < accumulators_.size(); ++k) accumulators_[k]->del_post_hook(hook_keys_[k]);
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

bool BackwardOverlap::arm() {
  std::lock_guard<std::mutex> lock(mu_);
  ONEBIT_CHECK(!armed_, "onebit overlap: armed twice without a step in between");
  if (!core_.averages_gradient()) return false;
  std::fill(ready_.begin(), ready_.end(), 0);
  for (size_t b = 0; b < buckets_.size(); ++b) waiting_[b] = buckets_[b].params;
  launched_ = done_ = 0;
  report_ = {};
  report_.buckets = static_cast<int>(buckets_.size());
  error_ = nullptr;
  callback_queued_ = false;
  armed_ = true;
  launch_ready();  // buckets without a hooked parameter start now (not counted as backward's)
  return true;
}

void BackwardOverlap::disarm() {
  std::lock_guard<std::mutex> lock(mu_);
  if (!armed_) return;
  ONEBIT_CHECK(report_.started_in_backward == 0 && !callback_queued_,
               "onebit overlap: disarmed after backward started exchanging");
  armed_ = false;
}

// The backward thread, once a parameter's gradient is accumulated.
void BackwardOverlap::on_gradient(size_t param) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!armed_ || ready_[param] || bucket_of_[param] == kNoBucket) return;
  ready_[param] = 1;
  if (!callback_queued_) {  // this backward ends once the exchange has
    callback_queued_ = true;
    torch::autograd::Engine::get_default_engine().queue_callback([this] { finish(); });
  }
  flat_.gather_grad(param);  // a .grad that is not its view (another dtype, replaced) is copied in now
  --waiting_[bucket_of_[param]];
  const size_t before = launched_;
  launch_ready();
  report_.started_in_backward += static_cast<int>(launched_ - before);
}

void BackwardOverlap::launch_ready() {
  const size_t before = launched_;
  while (launched_ < buckets_.size() && waiting_[launched_] == 0) queue_.push_back(launched_++);
  if (launched_ != before) cv_.notify_all();
}

OverlapReport BackwardOverlap::finish() {
  std::unique_lock<std::mutex> lock(mu_);
  if (!armed_) return std::exchange(finished_, {});
  const auto t0 = Clock::now();
  std::fill(waiting_.begin(), waiting_.end(), 0);  // what backward did not start starts now, in order
  launch_ready();
  cv_.wait(lock, [&] { return done_ == buckets_.size(); });
  report_.waited_seconds = seconds_since(t0);
  armed_ = false;
  if (error_) std::rethrow_exception(std::exchange(error_, nullptr));
  finished_ = report_;
  return report_;
}

void BackwardOverlap::exchange_loop() {
  const std::span<float> grads = flat_.grad_span();
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
    if (stop_) return;  // the owner is going: no new exchange starts
    const Bucket b = buckets_[queue_.front()];
    queue_.pop_front();
    const bool failed = error_ != nullptr;  // after an error the rest is skipped: finish() rethrows it
    lock.unlock();
    const auto t0 = Clock::now();
    std::exception_ptr error;
    if (!failed) {
      try {
        core_.average_ahead(grads, b.first, b.last);
      } catch (...) {
        error = std::current_exception();
      }
    }
    const double took = seconds_since(t0);
    lock.lock();
    report_.exchange_seconds += took;
    if (error) error_ = error;
    ++done_;
    cv_.notify_all();
  }
}

}  // namespace onebit
