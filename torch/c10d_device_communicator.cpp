// The Communicator over a c10d ProcessGroup on device buffers (NCCL): onebit's device pointers are
// wrapped as CUDA tensors without a copy, and each collective is ordered between onebit's stream and
// torch's current stream, which c10d's NCCL backend orders its own streams against.
#include <ATen/ATen.h>

#include "c10d_group.hpp"
#include "cuda_bridge.hpp"
#include "onebit/torch_c10d.hpp"

namespace onebit {
namespace {

class C10dDeviceCommunicator final : public StreamCommunicator {
 public:
  C10dDeviceCommunicator(c10d_compat::ProcessGroupPtr group, c10::Device device)
      : group_(std::move(group), c10::DeviceType::CUDA), stream_(device) {
    ONEBIT_CHECK(group_.name() == "c10d-nccl",
                 "c10d device communicator on rank " << group_.rank() << ": the group runs CUDA tensors on "
                     << group_.name() << "; device buffers need an NCCL group (make_c10d_communicator "
                                         "takes host buffers over any group)");
  }

  int rank() const override { return group_.rank(); }
  int size() const override { return group_.size(); }
  std::string backend() const override { return group_.name(); }
  CUstream_st* stream() const override { return stream_.get(); }
  void set_stream_ordered(bool on) override { ordered_ = on; }
  bool stream_ordered() const override { return ordered_; }

  void synchronize() override {
    group_.check_usable("synchronize");
    try {
      cuda::wait_stream(stream_.get(), timeout().count(), group_.name());
    } catch (const Error& e) {
      group_.fail("synchronize", e.what());
    }
  }

 protected:
  void do_allreduce_sum(std::span<float> data) override {
    if (data.empty()) return;
    std::vector<at::Tensor> t{wrap(data.data(), data.size(), at::kFloat)};
    ::c10d::AllreduceOptions o;
    o.reduceOp = ::c10d::ReduceOp::SUM;
    o.timeout = timeout();
    collective("allreduce", [&] { return group_.get().allreduce(t, o); });
  }

  void do_alltoall(std::span<const std::byte> send, std::span<std::byte> recv) override {
    if (send.empty()) return;
    // c10d takes non-const tensors; send is only read.
    at::Tensor in = wrap(const_cast<std::byte*>(send.data()), send.size(), at::kByte);
    at::Tensor out = wrap(recv.data(), recv.size(), at::kByte);
    std::vector<int64_t> equal_splits;  // empty: size() equal chunks along dim 0
    ::c10d::AllToAllOptions o;
    o.timeout = timeout();
    collective("alltoall", [&] { return group_.get().alltoall_base(out, in, equal_splits, equal_splits, o); });
  }

  void do_allgather(std::span<const std::byte> send, std::span<std::byte> recv) override {
    if (send.empty()) return;
    at::Tensor in = wrap(const_cast<std::byte*>(send.data()), send.size(), at::kByte);
    at::Tensor out = wrap(recv.data(), recv.size(), at::kByte);
    ::c10d::AllgatherOptions o;
    o.timeout = timeout();
    // Straight into the one output buffer (the list form would gather into a temporary and copy).
    collective("allgather", [&] { return group_.get()._allgather_base(out, in, o); });
  }

  void do_broadcast(std::span<std::byte> data, int root) override {
    if (data.empty()) return;
    std::vector<at::Tensor> t{wrap(data.data(), data.size(), at::kByte)};
    ::c10d::BroadcastOptions o;
    o.rootRank = root;
    o.timeout = timeout();
    collective("broadcast", [&] { return group_.get().broadcast(t, o); });
  }

  void do_barrier() override {
    ::c10d::BarrierOptions o;
    o.device_ids = {stream_.device().index()};
    o.timeout = timeout();
    collective("barrier", [&] { return group_.get().barrier(o); });
    synchronize();  // a barrier is waited for, stream-ordered or not
  }

 private:
  at::Tensor wrap(void* p, size_t n, at::ScalarType type) const {
    return at::from_blob(p, {static_cast<int64_t>(n)}, at::TensorOptions().dtype(type).device(stream_.device()));
  }

  // c10d orders the collective after torch's current stream and, once waited for, that stream
  // after the collective; onebit's stream is joined to it on both sides.
  template <class Start>
  void collective(const char* op, Start start) {
    group_.check_usable(op);
    torch_cuda::DeviceScope scope(stream_.device());
    stream_.torch_waits();
    group_.run(op, timeout(), start);
    stream_.wait_for_torch();
    if (!ordered_) synchronize();
  }

  C10dGroup group_;
  torch_cuda::DeviceStream stream_;
  bool ordered_ = false;
};

}  // namespace

std::unique_ptr<StreamCommunicator> make_c10d_device_communicator(c10::intrusive_ptr<c10d::ProcessGroup> group,
                                                                  c10::Device device) {
  ONEBIT_CHECK(device.is_cuda() && device.has_index(),
               "c10d device communicator: " << device << " is not a CUDA device with an index");
  return std::make_unique<C10dDeviceCommunicator>(std::move(group), device);
}

}  // namespace onebit
