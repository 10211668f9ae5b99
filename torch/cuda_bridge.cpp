// The stream bridge between onebit's CUDA runtime calls and torch's current stream (cuda_bridge.hpp).
#include "cuda_bridge.hpp"

#include <c10/core/impl/VirtualGuardImpl.h>

#include "cuda_check.hpp"

namespace onebit::torch_cuda {
namespace {

// torch's CUDA streams and events, through the interface every device type implements.
c10::impl::VirtualGuardImpl torch_cuda() { return c10::impl::VirtualGuardImpl(c10::DeviceType::CUDA); }

}  // namespace

DeviceScope::DeviceScope(c10::Device device) {
  ONEBIT_CHECK(device.is_cuda() && device.has_index(),
               "onebit cuda: " << device << " is not a CUDA device with an index");
  CUDA_CHECK(cudaGetDevice(&previous_));
  if (previous_ != device.index()) {
    CUDA_CHECK(cudaSetDevice(device.index()));
    changed_ = true;
  }
}

DeviceScope::~DeviceScope() {
  if (changed_) (void)cudaSetDevice(previous_);
}

DeviceStream::DeviceStream(c10::Device device) : device_(device) {
  DeviceScope scope(device);
  cudaEvent_t event = nullptr;
  CUDA_CHECK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
  ours_ = event;
  CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
}

DeviceStream::~DeviceStream() {
  if (stream_) (void)cudaStreamSynchronize(stream_);
  if (torchs_) torch_cuda().destroyEvent(torchs_, device_.index());
  if (ours_) (void)cudaEventDestroy(static_cast<cudaEvent_t>(ours_));
  if (stream_) (void)cudaStreamDestroy(stream_);
}

void DeviceStream::wait_for_torch() {
  const auto torch = torch_cuda();
  // Creates torch's event on first use and records it again afterwards.
  torch.record(&torchs_, torch.getStream(device_), device_.index(), c10::EventFlag::PYTORCH_DEFAULT);
  CUDA_CHECK(cudaStreamWaitEvent(stream_, static_cast<cudaEvent_t>(torchs_), 0));
}

void DeviceStream::torch_waits() {
  CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(ours_), stream_));
  const auto torch = torch_cuda();
  torch.block(ours_, torch.getStream(device_));
}

}  // namespace onebit::torch_cuda
