// FaultyCommunicator and its plans (see onebit/fault_injection.hpp).
#include "onebit/fault_injection.hpp"

#include <algorithm>
#include <charconv>
#include <cstring>
#include <ostream>

#include "onebit/error.hpp"

namespace onebit {
namespace {

constexpr std::byte kPoison{0xFF};  // every byte: a NaN in fp32, bf16 and fp16

template <class T>
bool parse_whole(std::string_view s, T& v) {
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  return !s.empty() && ec == std::errc() && end == s.data() + s.size();
}

}  // namespace

FaultPlan parse_fault_plan(std::string_view spec, std::string_view what) {
  FaultPlan plan;
  size_t at = 0;
  for (;;) {
    const size_t comma = std::min(spec.find(',', at), spec.size());
    const std::string_view item = spec.substr(at, comma - at);
    const size_t colon = item.find(':');
    PlannedFault f;
    ONEBIT_CHECK(colon != std::string_view::npos && parse_whole(item.substr(0, colon), f.rank) &&
                     parse_whole(item.substr(colon + 1), f.step) && f.rank >= 0 && f.step >= 1,
                 what << ": '" << item << "' is not RANK:STEP (a rank >= 0 and a step >= 1)");
    plan.push_back(f);
    if (comma == spec.size()) return plan;
    at = comma + 1;
  }
}

FaultyCommunicator::FaultyCommunicator(std::shared_ptr<Communicator> inner, FaultPlan plan, std::ostream* log)
    : inner_(std::move(inner)), log_(log) {
  ONEBIT_CHECK(inner_, "fault injection: no communicator to wrap");
  ONEBIT_CHECK(!inner_->device_memory(), "fault injection on rank " << inner_->rank() << ": the " << inner_->backend()
                                             << " communicator takes device memory; the faults write host buffers");
  ONEBIT_CHECK(plan.empty() || inner_->size() >= 2,
               "fault injection: a world of one rank exchanges nothing in the warmup, so a non-finite contribution "
               "has nowhere to go; plan faults for 2 or more ranks");
  for (const PlannedFault& f : plan) {
    ONEBIT_CHECK(f.rank >= 0 && f.rank < inner_->size(),
                 "fault injection: the plan names rank " << f.rank << ", the world has " << inner_->size() << " ranks");
    if (f.rank == inner_->rank()) steps_.insert(f.step);
  }
  set_timeout(inner_->timeout());
}

void FaultyCommunicator::begin_step(int64_t step) {
  ONEBIT_CHECK(!armed_, "fault injection on rank " << rank() << ": the non-finite contribution planned for step "
                                                   << step_ << " found no collective to travel in");
  step_ = step;
  if (steps_.count(step)) arm_nonfinite();
}

void FaultyCommunicator::arm_nonfinite() { armed_ = true; }

bool FaultyCommunicator::take_fault(const char* collective) {
  if (!armed_) return false;
  armed_ = false;
  ++injected_;
  if (log_) {
    *log_ << "onebit: rank " << rank() << " injects a NaN into its " << collective << " contribution";
    if (step_ > 0) *log_ << " at step " << step_;
    *log_ << " (fault injection)" << std::endl;
  }
  return true;
}

std::span<const std::byte> FaultyCommunicator::contribution(std::span<const std::byte> send, const char* collective) {
  if (send.empty() || !take_fault(collective)) return send;
  scratch_.assign(send.size(), kPoison);
  return scratch_;
}

// Each forwards through inner's public call, which checks, counts and times it there too; this
// decorator's own timeout (set_timeout on it) reaches inner first.
void FaultyCommunicator::do_allreduce_sum(std::span<float> data) {
  if (!data.empty() && take_fault("allreduce_sum")) std::memset(data.data(), 0xFF, data.size_bytes());
  inner_->set_timeout(timeout());
  inner_->allreduce_sum(data);
}

void FaultyCommunicator::do_alltoall(std::span<const std::byte> send, std::span<std::byte> recv) {
  const auto mine = contribution(send, "alltoall");
  inner_->set_timeout(timeout());
  inner_->alltoall(mine, recv);
}

void FaultyCommunicator::do_allgather(std::span<const std::byte> send, std::span<std::byte> recv) {
  const auto mine = contribution(send, "allgather");
  inner_->set_timeout(timeout());
  inner_->allgather(mine, recv);
}

void FaultyCommunicator::do_broadcast(std::span<std::byte> data, int root) {
  // Only the root contributes; the root's buffer is what everyone receives, its own included.
  if (root == rank() && !data.empty() && take_fault("broadcast")) std::fill(data.begin(), data.end(), kPoison);
  inner_->set_timeout(timeout());
  inner_->broadcast(data, root);
}

void FaultyCommunicator::do_barrier() {
  inner_->set_timeout(timeout());
  inner_->barrier();
}

}  // namespace onebit
