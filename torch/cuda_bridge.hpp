// onebit's device code beside torch's on one CUDA device (builds with ONEBIT_HAVE_CUDA): a stream
// of onebit's own, ordered against torch's current stream with events. Needs no CUDA-enabled
// libtorch header: torch's side is reached through c10's device-generic stream and event interface.
#pragma once
#include <c10/core/Device.h>

#include "onebit/cuda_kernels.hpp"

namespace onebit::torch_cuda {

// Makes `device` the current CUDA device of onebit's CUDA runtime for the scope (kernel launches
// and allocations go to the current device, kept per thread).
class DeviceScope {
 public:
  explicit DeviceScope(c10::Device device);
  ~DeviceScope();
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;

 private:
  int previous_ = -1;
  bool changed_ = false;
};

// A non-blocking stream of onebit's own on one CUDA device.
class DeviceStream {
 public:
  // device: a CUDA device with an index.
  explicit DeviceStream(c10::Device device);
  ~DeviceStream();
  DeviceStream(const DeviceStream&) = delete;
  DeviceStream& operator=(const DeviceStream&) = delete;

  c10::Device device() const { return device_; }
  cuda::Stream get() const { return stream_; }
  // Work enqueued on get() from now on runs after all that torch has enqueued so far on its current
  // stream of this device (the backward pass that wrote the gradients, say).
  void wait_for_torch();
  // Work torch enqueues on its current stream from now on runs after all that get() holds now.
  void torch_waits();

 private:
  c10::Device device_;
  cuda::Stream stream_ = nullptr;
  void* ours_ = nullptr;   // our cudaEvent_t, recorded on stream_
  void* torchs_ = nullptr;  // torch's event (created by torch), recorded on torch's current stream
};

}  // namespace onebit::torch_cuda
