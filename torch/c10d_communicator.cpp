// The Communicator over a c10d::ProcessGroup: onebit's host buffers are wrapped as tensors without a
// copy (CPU groups) or staged through a device (NCCL), and every wait is bounded by timeout().
#include <ATen/ATen.h>

#include <cstring>
#include <string>
#include <vector>

#include "c10d_group.hpp"
#include "onebit/torch_c10d.hpp"

namespace onebit {
namespace {

class C10dCommunicator final : public Communicator {
 public:
  C10dCommunicator(c10d_compat::ProcessGroupPtr group, c10::Device staging)
      : group_(std::move(group), c10::DeviceType::CPU), staging_(staging) {}

  int rank() const override { return group_.rank(); }
  int size() const override { return group_.size(); }
  std::string backend() const override { return group_.name(); }

 protected:
  void do_allreduce_sum(std::span<float> data) override {
    if (data.empty()) return;
    at::Tensor host = wrap(data.data(), data.size(), at::kFloat);
    std::vector<at::Tensor> t{stage(host)};
    ::c10d::AllreduceOptions o;
    o.reduceOp = ::c10d::ReduceOp::SUM;
    o.timeout = timeout();
    run("allreduce", [&] { return group_.get().allreduce(t, o); });
    unstage(host, t[0]);
  }

  void do_alltoall(std::span<const std::byte> send, std::span<std::byte> recv) override {
    if (send.empty()) return;
    // c10d takes non-const tensors; send is only read.
    at::Tensor in_host = wrap(const_cast<std::byte*>(send.data()), send.size(), at::kByte);
    at::Tensor out_host = wrap(recv.data(), recv.size(), at::kByte);
    at::Tensor in = stage(in_host), out = stage(out_host, /*copy=*/false);
    std::vector<int64_t> equal_splits;  // empty: size() equal chunks along dim 0
    ::c10d::AllToAllOptions o;
    o.timeout = timeout();
    run("alltoall", [&] { return group_.get().alltoall_base(out, in, equal_splits, equal_splits, o); });
    unstage(out_host, out);
  }

  void do_allgather(std::span<const std::byte> send, std::span<std::byte> recv) override {
    if (send.empty()) return;
    at::Tensor in_host = wrap(const_cast<std::byte*>(send.data()), send.size(), at::kByte);
    at::Tensor out_host = wrap(recv.data(), recv.size(), at::kByte);
    at::Tensor out = stage(out_host, /*copy=*/false);
    // The list form with views into one buffer: every backend has it (Gloo 1.13 lacks
    // _allgather_base), and on CPU it lands in place without a copy.
    const int64_t n = static_cast<int64_t>(send.size());
    std::vector<std::vector<at::Tensor>> outs(1);
    for (int r = 0; r < size(); ++r) outs[0].push_back(out.narrow(0, r * n, n));
    std::vector<at::Tensor> ins{stage(in_host)};
    ::c10d::AllgatherOptions o;
    o.timeout = timeout();
    run("allgather", [&] { return group_.get().allgather(outs, ins, o); });
    unstage(out_host, out);
  }

  void do_broadcast(std::span<std::byte> data, int root) override {
    if (data.empty()) return;
    at::Tensor host = wrap(data.data(), data.size(), at::kByte);
    std::vector<at::Tensor> t{stage(host)};
    ::c10d::BroadcastOptions o;
    o.rootRank = root;
    o.timeout = timeout();
    run("broadcast", [&] { return group_.get().broadcast(t, o); });
    unstage(host, t[0]);
  }

  void do_barrier() override {
    ::c10d::BarrierOptions o;
    o.timeout = timeout();
    run("barrier", [&] { return group_.get().barrier(o); });
  }

 private:
  static at::Tensor wrap(void* p, size_t n, at::ScalarType type) {
    return at::from_blob(p, {static_cast<int64_t>(n)}, at::TensorOptions().dtype(type));
  }
  at::Tensor stage(const at::Tensor& host, bool copy = true) const {
    if (staging_.is_cpu()) return host;
    return copy ? host.to(staging_) : at::empty_like(host, host.options().device(staging_));
  }
  void unstage(at::Tensor& host, const at::Tensor& staged) const {
    if (!staging_.is_cpu()) host.copy_(staged);
  }

  template <class Start>
  void run(const char* op, Start start) {
    group_.run(op, timeout(), start);
  }

  C10dGroup group_;
  c10::Device staging_;
};

// World size 1: the rank is its own peer in every collective.
class SingleRankCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string backend() const override { return "single"; }

 protected:
  void do_allreduce_sum(std::span<float>) override {}
  void do_alltoall(std::span<const std::byte> send, std::span<std::byte> recv) override {
    if (!send.empty() && send.data() != recv.data()) std::memmove(recv.data(), send.data(), send.size());
  }
  void do_allgather(std::span<const std::byte> send, std::span<std::byte> recv) override {
    do_alltoall(send, recv);
  }
  void do_broadcast(std::span<std::byte>, int) override {}
  void do_barrier() override {}
};

}  // namespace

std::unique_ptr<Communicator> make_c10d_communicator(c10::intrusive_ptr<c10d::ProcessGroup> group,
                                                     c10::Device staging) {
  return std::make_unique<C10dCommunicator>(std::move(group), staging);
}

std::unique_ptr<Communicator> make_single_rank_communicator() {
  return std::make_unique<SingleRankCommunicator>();
}

}  // namespace onebit
