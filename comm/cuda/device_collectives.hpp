// DeviceCollectives: the collectives device code needs, on device buffers, over any Communicator:
// straight through a StreamCommunicator (NCCL), ordered against our stream with events, or staged
// through pinned host memory for host backends (the local thread world, MPI, Gloo).
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <string>

#include "onebit/communicator.hpp"
#include "onebit/cuda_kernels.hpp"
#include "onebit/nccl_comm.hpp"

namespace onebit::cuda {

class DeviceCollectives {
 public:
  DeviceCollectives(Communicator& comm, Stream stream);
  ~DeviceCollectives();
  DeviceCollectives(const DeviceCollectives&) = delete;
  DeviceCollectives& operator=(const DeviceCollectives&) = delete;

  Communicator& comm() const { return comm_; }
  Stream stream() const { return stream_; }

  // As Communicator's collectives, with device pointers; enqueued on stream() (a host backend
  // makes this a host round trip).
  void allreduce_sum(float* data, size_t n);
  void alltoall(const void* send, void* recv, size_t bytes);
  void allgather(const void* send, void* recv, size_t bytes_each);

  // Waits for everything enqueued on stream() (or for `event`), within the communicator's timeout.
  void wait(const std::string& what) const;
  void wait_event(cudaEvent_t event, const std::string& what) const;

 private:
  // Runs op() on the stream backend, ordered after our stream's work and before its next work.
  template <class Op>
  void on_device(Op&& op);
  void reserve(size_t bytes);

  Communicator& comm_;
  StreamCommunicator* stream_comm_;
  Stream stream_;
  cudaEvent_t before_ = nullptr, after_ = nullptr;
  std::byte* send_host_ = nullptr;  // pinned staging buffers
  std::byte* recv_host_ = nullptr;
  size_t staged_ = 0;
};

}  // namespace onebit::cuda
