// FaultyCommunicator: fault injection through a Communicator decorator (as leveldb injects faults
// through an Env wrapper). It forwards every collective to the communicator it wraps and, where a
// fault plan says so, corrupts what THIS rank contributes: the rest of the program, and the peers,
// see exactly what a rank with a broken gradient would send.
//
// Why the contribution, not the gradient: every skip of a non-finite step is decided on what the
// ranks exchanged, so a NaN put on the wire travels the same path a NaN gradient does. The first
// collective of each optimizer step carries values computed from this rank's gradient, and it is
// the one whose result the optimizers check before any state changes:
//   - warmup, fp32 exchange: the gradient itself (allreduce_sum); the averaged gradient's per-layer
//     norms come out non-finite on every rank (CpuOptimizer::lamb_ratios);
//   - warmup, bf16/fp16 exchange: the rounded gradient (HalfAllreduce's alltoall); the average
//     every rank gathers holds NaNs;
//   - compression: the worker scale, or with scale groups the finiteness flag (the allgather of
//     CompressedAllreduce::compress / compress_momentum), which a non-finite gradient makes NaN;
//     with 1-bit LAMB's track_scales, the per-layer gradient norms (allreduce_sum) come first;
//   - 1-bit LAMB's refresh steps: the momentum average, as in warmup.
// Only CompressedAllreduce::run's pipeline (no optimizer uses it) sends sign bits first, which no
// fault can make non-finite.
#pragma once
#include <cstdint>
#include <iosfwd>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "onebit/communicator.hpp"

namespace onebit {

// One planned fault: at `step`, rank `rank` contributes a non-finite value.
struct PlannedFault {
  int rank = 0;
  int64_t step = 0;
  bool operator==(const PlannedFault&) const = default;
};
using FaultPlan = std::vector<PlannedFault>;

// "RANK:STEP[,RANK:STEP...]" (RANK >= 0, STEP >= 1). Throws onebit::Error starting with `what` and
// naming the first item that is not RANK:STEP.
FaultPlan parse_fault_plan(std::string_view spec, std::string_view what = "fault plan");

class FaultyCommunicator final : public Communicator {
 public:
  // Every rank of the world builds one with the same plan; each acts on its own entries. Throws
  // onebit::Error if the plan names a rank outside the world, if the world has one rank (it
  // exchanges nothing in the warmup, so there is nothing to corrupt), or if `inner` takes device
  // memory (the corruption writes host buffers). `log` (may be null) gets a line per fault.
  FaultyCommunicator(std::shared_ptr<Communicator> inner, FaultPlan plan, std::ostream* log);

  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
  std::string backend() const override { return inner_->backend(); }
  bool device_memory() const override { return inner_->device_memory(); }
  bool any_thread() const override { return inner_->any_thread(); }

  // The caller's clock: what follows belongs to `step`. At a step the plan names for this rank, the
  // next collective this rank sends data in is corrupted (arm_nonfinite). Throws onebit::Error if
  // the fault of the step before is still armed: it found no collective to travel in.
  void begin_step(int64_t step);
  // This rank's contribution to the next collective it sends data in (allreduce_sum, alltoall,
  // allgather, or a broadcast it is the root of; not a barrier, nor a broadcast it receives) has
  // every byte set to 0xFF: a NaN read as fp32, bf16 or fp16 alike. Once; then plain forwarding.
  // allreduce_sum overwrites the caller's buffer (in place, as the sum would); the others send a
  // corrupted copy and leave the caller's send buffer as it is.
  void arm_nonfinite();
  bool armed() const { return armed_; }
  // Faults delivered so far.
  int64_t injected() const { return injected_; }
  // This rank's planned steps.
  const std::set<int64_t>& planned_steps() const { return steps_; }

 protected:
  void do_allreduce_sum(std::span<float> data) override;
  void do_alltoall(std::span<const std::byte> send, std::span<std::byte> recv) override;
  void do_allgather(std::span<const std::byte> send, std::span<std::byte> recv) override;
  void do_broadcast(std::span<std::byte> data, int root) override;
  void do_barrier() override;

 private:
  // Whether this collective carries the armed fault (disarming it), after logging it.
  bool take_fault(const char* collective);
  // A corrupted copy of `send`, when the fault travels in this collective; else `send` itself.
  std::span<const std::byte> contribution(std::span<const std::byte> send, const char* collective);

  std::shared_ptr<Communicator> inner_;
  std::set<int64_t> steps_;
  std::ostream* log_;
  int64_t step_ = 0;  // the step begin_step last named; 0: none
  bool armed_ = false;
  int64_t injected_ = 0;
  std::vector<std::byte> scratch_;
};

}  // namespace onebit
