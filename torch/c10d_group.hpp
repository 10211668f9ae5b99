// What the two c10d communicators share (host buffers: c10d_communicator.cpp; device buffers:
// c10d_device_communicator.cpp): the group, its rank, size and name, and the rule that one failed
// or timed-out collective breaks the communicator for good.
#pragma once
#include <chrono>
#include <exception>
#include <string>

#include "c10d_compat.hpp"
#include "onebit/error.hpp"

namespace onebit {

class C10dGroup {
 public:
  // buffers: where the collectives' tensors live (CPU, or CUDA for device buffers); it names the
  // engine that runs them ("gloo", "nccl", ...).
  C10dGroup(c10d_compat::ProcessGroupPtr group, c10::DeviceType buffers) : group_(std::move(group)) {
    ONEBIT_CHECK(group_, "c10d communicator: no process group given");
    name_ = "c10d-" + (buffers == c10::DeviceType::CUDA ? c10d_compat::cuda_backend_name(*group_)
                                                        : c10d_compat::backend_name(*group_));
    rank_ = group_->getRank();
    size_ = group_->getSize();
  }

  ::c10d::ProcessGroup& get() const { return *group_; }
  int rank() const { return rank_; }
  int size() const { return size_; }
  const std::string& name() const { return name_; }

  // Starts one collective and waits for it, at most `timeout`. Any failure leaves the ranks out of
  // step (some may have finished the collective, some not), so the communicator stays broken.
  template <class Start>
  void run(const char* op, std::chrono::milliseconds timeout, Start start) {
    check_usable(op);
    std::string cause;
    try {
      c10::intrusive_ptr<c10d_compat::Work> work = start();
      if (c10d_compat::wait(*work, timeout)) return;
      cause = "no answer within " + std::to_string(timeout.count()) + " ms";
    } catch (const std::exception& e) {
      cause = e.what();
      // c10::Error appends a C++ backtrace; the first line carries the cause.
      if (auto nl = cause.find('\n'); nl != std::string::npos) cause.resize(nl);
    }
    fail(op, cause);
  }

  void check_usable(const char* op) const {
    ONEBIT_CHECK(broken_.empty(), name_ << " " << op << " on rank " << rank_ << ": the group failed earlier ("
                                        << broken_ << "); start a new process group");
  }

  [[noreturn]] void fail(const char* op, const std::string& cause) {
    broken_ = std::string(op) + ": " + cause;
    ONEBIT_CHECK(false, name_ << " " << op << " on rank " << rank_ << " of " << size_ << " failed: " << cause
                              << " (a rank died, stalled, or called a different collective)");
  }

 private:
  c10d_compat::ProcessGroupPtr group_;
  std::string name_;
  int rank_ = 0, size_ = 1;
  std::string broken_;
};

}  // namespace onebit
