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
  // scale_group: as CompressedAllreduce's (0, or a positive multiple of 64: a scale per group of
  // that many elements of each chunk, docs/algorithm.md §12).
  CudaCompressedAllreduce(Communicator& comm, Stream stream, size_t n, std::span<const size_t> layer_bounds = {},
                          int* skip = nullptr, size_t scale_group = 0);
  ~CudaCompressedAllreduce();

  size_t size() const { return n_; }
  size_t padded_size() const { return n_pad_; }
  size_t chunk_size() const { return n_pad_ / static_cast<size_t>(world_); }
  size_t scale_group() const { return group_; }
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
  void compress_momentum(const kernels::Momentum& m, const float* g, float beta1, const float* k);
  void exchange();
  void decode(float* out);
  void commit(bool applied);
  // The result of the exchange enqueued last, decoded with one scale per scale group of
  // partition(): what kernels enqueued in the same step read. Once committed it is the momentum a
  // later step reads as committed_bits() and committed_scales().
  const uint8_t* bits() const { return result_bits_[1 - result_cur_].data(); }
  const float* scales() const { return server_scales_[1 - result_cur_].data(); }
  const uint8_t* committed_bits() const { return result_bits_[result_cur_].data(); }
  const float* committed_scales() const { return server_scales_[result_cur_].data(); }

  // The error state on the device, for the optimizers' own passes over it (tracked scales and
  // refreshes): the current worker buffer (compensated values and scales) and the server's.
  float* worker_c() { return worker_c_[worker_cur_].data(); }
  ScalesIn worker_scales() const { return {worker_scale_[worker_cur_].data(), grouped()}; }
  float* server_c() { return server_c_.data(); }
  ScalesIn server_scales() const { return {server_scale_.data(), grouped()}; }
  const DevicePartition& server_partition() const { return server_part_; }
  // The server chunk cut at the layers as well (layer ids as in the buffer), for per-layer passes.
  const DevicePartition& server_layer_partition() const { return server_layers_; }
  // Scales to 0 (with skip): the compensated values are then the errors themselves.
  void zero_scales(const int* skip);

  // Error state as plain errors on the host (docs/algorithm.md §1), as CompressedAllreduce. Synchronous.
  // uncommitted: the worker error that the last compress*() left and commit(true) would make
  // current, for a reader that knows the step was applied but has not committed it.
  std::vector<float> worker_error(bool uncommitted = false) const;
  std::vector<float> server_error() const;
  void set_errors(std::span<const float> worker, std::span<const float> server);

 private:
  bool grouped() const { return group_ > 0; }
  size_t groups() const { return part_.host().groups_per_chunk(); }  // scale groups per chunk
  size_t server_real() const;
  void begin_compress();
  void finish_compress();
  ScalesOut worker_out() { return {worker_scale_[1 - worker_cur_].data(), grouped(), grouped() ? sum_sq_.data() : nullptr}; }

  std::unique_ptr<DeviceCollectives> coll_;
  Stream stream_;
  int rank_, world_;
  size_t n_, n_pad_, group_;
  DevicePartition part_, server_part_, server_layers_;
  // Worker state, double buffered so a skipped step leaves it untouched: worker_scale_[b] holds the
  // scales of worker_c_[b] (one, or one per scale group of the whole buffer).
  DeviceArray<float> worker_c_[2], worker_scale_[2], server_c_;
  DeviceArray<float> server_scale_;  // one per scale group of this rank's chunk
  int worker_cur_ = 0;
  DeviceArray<uint8_t> send_bits_, recv_bits_, server_bits_;
  // Every rank's worker scales for this rank's chunk: [rank][group].
  DeviceArray<float> worker_scales_;
  // Grouped: this rank's sum of squares over its compressed input, and every rank's (the finiteness check).
  DeviceArray<double> sum_sq_, sums_sq_;
  // The results of the last two exchanges; result_cur_ is the committed one.
  DeviceArray<uint8_t> result_bits_[2];
  DeviceArray<float> server_scales_[2];
  int result_cur_ = 0;
  DeviceArray<int> own_skip_;
  int* skip_;
  int* host_flag_ = nullptr;  // pinned, for run()
};

}  // namespace onebit::cuda
