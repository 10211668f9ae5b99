// Device-buffer collectives over any Communicator: direct on NCCL, staged through pinned host memory
// on host backends.
#include "device_collectives.hpp"

#include <chrono>
#include <thread>

#include "cuda_check.hpp"
#include "onebit/stream_communicator.hpp"

namespace onebit::cuda {

DeviceCollectives::DeviceCollectives(Communicator& comm, Stream stream)
    : comm_(comm), stream_comm_(dynamic_cast<StreamCommunicator*>(&comm)), stream_(stream) {
  ONEBIT_CHECK(!comm.device_memory() || stream_comm_,
               "cuda collectives: the " << comm.backend() << " communicator takes device memory but "
                                        << "is not a StreamCommunicator");
  if (stream_comm_ && stream_comm_->stream() != stream_) {
    CUDA_CHECK(cudaEventCreateWithFlags(&before_, cudaEventDisableTiming));
    CUDA_CHECK(cudaEventCreateWithFlags(&after_, cudaEventDisableTiming));
  }
}

DeviceCollectives::~DeviceCollectives() {
  // Staged copies may still be in flight on the stream; pinned memory must outlive them.
  if (send_host_ || recv_host_) (void)cudaStreamSynchronize(stream_);
  if (send_host_) (void)cudaFreeHost(send_host_);
  if (recv_host_) (void)cudaFreeHost(recv_host_);
  if (before_) (void)cudaEventDestroy(before_);
  if (after_) (void)cudaEventDestroy(after_);
}

template <class Op>
void DeviceCollectives::on_device(Op&& op) {
  if (before_) {
    CUDA_CHECK(cudaEventRecord(before_, stream_));
    CUDA_CHECK(cudaStreamWaitEvent(stream_comm_->stream(), before_, 0));
  }
  op();
  if (after_) {
    CUDA_CHECK(cudaEventRecord(after_, stream_comm_->stream()));
    CUDA_CHECK(cudaStreamWaitEvent(stream_, after_, 0));
  }
}

void DeviceCollectives::reserve(size_t bytes) {
  if (bytes <= staged_) return;
  wait("cuda collectives (staging)");  // earlier staged copies finish before their buffers go
  if (send_host_) CUDA_CHECK(cudaFreeHost(send_host_));
  if (recv_host_) CUDA_CHECK(cudaFreeHost(recv_host_));
  send_host_ = recv_host_ = nullptr;
  staged_ = 0;
  CUDA_CHECK(cudaMallocHost(&send_host_, bytes));
  CUDA_CHECK(cudaMallocHost(&recv_host_, bytes));
  staged_ = bytes;
}

// Every rank has the same sizes, so an empty exchange is skipped on all ranks alike.
void DeviceCollectives::allreduce_sum(float* data, size_t n) {
  if (n == 0) return;
  if (stream_comm_) {
    on_device([&] { comm_.allreduce_sum(std::span<float>(data, n)); });
    return;
  }
  const size_t bytes = n * sizeof(float);
  reserve(bytes);
  CUDA_CHECK(cudaMemcpyAsync(send_host_, data, bytes, cudaMemcpyDeviceToHost, stream_));
  wait("cuda allreduce (staging)");
  comm_.allreduce_sum(std::span<float>(reinterpret_cast<float*>(send_host_), n));
  CUDA_CHECK(cudaMemcpyAsync(data, send_host_, bytes, cudaMemcpyHostToDevice, stream_));
}

void DeviceCollectives::alltoall(const void* send, void* recv, size_t bytes) {
  if (bytes == 0) return;
  if (stream_comm_) {
    on_device([&] {
      comm_.alltoall(std::span<const std::byte>(static_cast<const std::byte*>(send), bytes),
                     std::span<std::byte>(static_cast<std::byte*>(recv), bytes));
    });
    return;
  }
  reserve(bytes);
  CUDA_CHECK(cudaMemcpyAsync(send_host_, send, bytes, cudaMemcpyDeviceToHost, stream_));
  wait("cuda alltoall (staging)");
  comm_.alltoall(std::span<const std::byte>(send_host_, bytes), std::span<std::byte>(recv_host_, bytes));
  CUDA_CHECK(cudaMemcpyAsync(recv, recv_host_, bytes, cudaMemcpyHostToDevice, stream_));
}

void DeviceCollectives::allgather(const void* send, void* recv, size_t bytes_each) {
  const size_t total = bytes_each * static_cast<size_t>(comm_.size());
  if (total == 0) return;
  if (stream_comm_) {
    on_device([&] {
      comm_.allgather(std::span<const std::byte>(static_cast<const std::byte*>(send), bytes_each),
                      std::span<std::byte>(static_cast<std::byte*>(recv), total));
    });
    return;
  }
  reserve(total);
  CUDA_CHECK(cudaMemcpyAsync(send_host_, send, bytes_each, cudaMemcpyDeviceToHost, stream_));
  wait("cuda allgather (staging)");
  comm_.allgather(std::span<const std::byte>(send_host_, bytes_each), std::span<std::byte>(recv_host_, total));
  CUDA_CHECK(cudaMemcpyAsync(recv, recv_host_, total, cudaMemcpyHostToDevice, stream_));
}

void DeviceCollectives::wait(const std::string& what) const {
  // NCCL first: its own wait aborts a communicator whose peer is gone.
  if (stream_comm_) stream_comm_->synchronize();
  wait_stream(stream_, comm_.timeout().count(), what + " on rank " + std::to_string(comm_.rank()));
}

void DeviceCollectives::wait_event(cudaEvent_t event, const std::string& what) const {
  const auto deadline = std::chrono::steady_clock::now() + comm_.timeout();
  for (int spins = 0;; ++spins) {
    const cudaError_t rc = cudaEventQuery(event);
    if (rc == cudaSuccess) return;
    if (rc != cudaErrorNotReady) CUDA_CHECK(rc);
    if (std::chrono::steady_clock::now() > deadline) {
      if (stream_comm_) stream_comm_->synchronize();  // names and aborts a stuck NCCL operation
      ONEBIT_CHECK(false, what << " on rank " << comm_.rank() << ": the GPU did not finish within "
                               << comm_.timeout().count() << " ms");
    }
    if (spins > 200) std::this_thread::sleep_for(std::chrono::microseconds(20));
  }
}

}  // namespace onebit::cuda
