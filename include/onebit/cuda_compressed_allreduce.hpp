// The compressed allreduce of docs/algorithm.md §2 with its error state and math on the GPU: the same results as
// onebit::CompressedAllreduce (onebit/compressed_allreduce.hpp), bit for bit. Works over any
// Communicator: NCCL (device memory, stream-ordered) or a host backend, through pinned staging
// buffers. Needs no CUDA headers.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "onebit/communicator.hpp"
#include "onebit/cuda_kernels.hpp"

namespace onebit::cuda {

class DeviceCollectives;  // comm/cuda/device_collectives.hpp

// Averages one device buffer of n floats over all ranks (docs/algorithm.md §2). Owns the error state on the
// device. run() is the whole call; the optimizers use the enqueue-only halves.
class CudaCompressedAllreduce {
 public:
  // stream: where the work runs. skip: a device flag shared with an optimizer (null: its own).
  CudaCompressedAllreduce(Communicator& comm, Stream stream, size_t n,
                          std::span<const size_t> layer_bounds = {}, int* skip = nullptr);
  ~CudaCompressedAllreduce();

  size_t size() const { return n_; }
  size_t padded_size() const { return n_pad_; }
  size_t chunk_size() const { return n_pad_ / static_cast<size_t>(world_); }
  const DevicePartition& partition() const { return part_; }
  Stream stream() const { return stream_; }
  int* skip_flag() const { return skip_; }

  // Averages x (device, n floats) in place and waits. Returns false, changing nothing, when any
  // rank's x held a NaN or an infinity (every rank returns false together).
  bool run(float* x);

  // Enqueue only. compress*() sets the skip flag on the device when some rank's input was not
  // finite; exchange() and decode() then change nothing. Once the host has read the flag, call
  // commit(applied) before the next compress*().
  void compress(const float* x);
  void compress_momentum(const float* m, const float* g, float beta1, const float* k);
  void exchange();
  void decode(float* out);
  void commit(bool applied);
  const uint8_t* bits() const { return result_bits_.data(); }
  const float* chunk_scales() const { return server_scales_.data(); }

  // Error state as plain errors on the host (docs/algorithm.md §1), as CompressedAllreduce. Synchronous.
  // uncommitted: the worker error that the last compress*() left and commit(true) would make
  // current, for a reader that knows the step was applied but has not committed it.
  std::vector<float> worker_error(bool uncommitted = false) const;
  std::vector<float> server_error() const;
  void set_errors(std::span<const float> worker, std::span<const float> server);

 private:
  size_t server_real() const;
  void finish_compress();

  std::unique_ptr<DeviceCollectives> coll_;
  Stream stream_;
  int rank_, world_;
  size_t n_, n_pad_;
  DevicePartition part_, server_part_;
  DeviceArray<float> worker_c_[2], server_c_;
  DeviceArray<float> worker_scale_;  // [2]: the scale of each worker_c_ buffer
  DeviceArray<float> server_scale_;  // [1]
  int worker_cur_ = 0;
  DeviceArray<uint8_t> send_bits_, recv_bits_, server_bits_, result_bits_;
  DeviceArray<float> worker_scales_, server_scales_;
  DeviceArray<int> own_skip_;
  int* skip_;
  int* host_flag_ = nullptr;  // pinned, for run()
};

}  // namespace onebit::cuda
