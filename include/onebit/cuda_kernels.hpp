// CUDA twins of the CPU kernels (onebit/kernels.hpp): the same passes on device pointers, enqueued
// on a stream, bitwise equal to the CPU. Callers need no CUDA headers (a Stream is a cudaStream_t).
//
// Bitwise equality: element-wise math is the CPU's fp32 operations in the CPU's order (built with
// --fmad=false, IEEE division and square root), and every sum is accumulated in double in the CPU's
// pinned order (16 lanes by element index within each piece, lanes folded in order, pieces added
// in order). So a GPU rank and a CPU rank given the same inputs hold the same bits.
//
// `skip` (may be null) is a device flag: when *skip != 0 at the time a kernel runs it changes
// nothing. The optimizers use it to skip a step whose gradient is not finite without a host round
// trip; the kernels that decide it take an `int* skip` they may set.
//
// This header is the user API: the device check and stream wait, device buffers, DevicePartition
// and the kernel twins of onebit/kernels.hpp. Launch details that only onebit's own device code uses
// (a partition's device arrays, the optimizers' per-layer scalar math) are in kernels/cuda/launchers.hpp.
#pragma once
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "onebit/kernels.hpp"

struct CUstream_st;

namespace onebit::cuda {

using Stream = CUstream_st*;

namespace detail {
struct PartitionArrays;  // kernels/cuda/launchers.hpp
}  // namespace detail

// True when a CUDA device can be used (tests skip otherwise).
bool device_available();
std::string device_name(int device = 0);
// major * 10 + minor (90 for an H100); bf16 arithmetic needs 80 or more.
int compute_capability(int device = 0);
// Waits for all work on `stream`, polling, and throws onebit::Error naming `what` after `timeout_ms`.
void wait_stream(Stream stream, int64_t timeout_ms, const std::string& what);

// An owning cudaMalloc'd byte buffer.
class DeviceMemory {
 public:
  DeviceMemory() = default;
  explicit DeviceMemory(size_t bytes);
  ~DeviceMemory();
  DeviceMemory(DeviceMemory&& o) noexcept;
  DeviceMemory& operator=(DeviceMemory&& o) noexcept;
  DeviceMemory(const DeviceMemory&) = delete;
  DeviceMemory& operator=(const DeviceMemory&) = delete;

  void* get() const { return ptr_; }
  size_t bytes() const { return bytes_; }
  // Synchronous copies (set-up, checkpoints, tests), and an asynchronous zero fill.
  void upload(const void* src, size_t bytes, size_t offset = 0);
  void download(void* dst, size_t bytes, size_t offset = 0) const;
  void zero(Stream stream = nullptr);

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// DeviceMemory typed as n elements of T.
template <class T>
class DeviceArray {
 public:
  DeviceArray() = default;
  explicit DeviceArray(size_t n) : mem_(n * sizeof(T)), n_(n) {}
  explicit DeviceArray(std::span<const T> host) : DeviceArray(host.size()) { upload(host); }

  T* data() const { return static_cast<T*>(mem_.get()); }
  size_t size() const { return n_; }
  void upload(std::span<const T> host, size_t offset = 0) {
    mem_.upload(host.data(), host.size_bytes(), offset * sizeof(T));
  }
  std::vector<T> download() const {
    std::vector<T> v(n_);
    mem_.download(v.data(), n_ * sizeof(T));
    return v;
  }
  void zero(Stream stream = nullptr) { mem_.zero(stream); }
  const DeviceMemory& mem() const { return mem_; }

 private:
  DeviceMemory mem_;
  size_t n_ = 0;
};

// A Partition uploaded to the device, with the scratch its reductions need. One stream at a time:
// the scratch is shared by every kernel launched over this partition.
class DevicePartition {
 public:
  DevicePartition() = default;
  explicit DevicePartition(const kernels::Partition& part);

  const kernels::Partition& host() const { return host_; }
  size_t size() const { return host_.size(); }
  size_t num_layers() const { return host_.num_layers(); }
  size_t num_pieces() const { return host_.pieces().size(); }
  size_t num_blocks() const { return host_.num_blocks(); }

 private:
  // The device arrays below are launch details: the launchers in kernels/cuda reach them through
  // detail::PartitionArrays (kernels/cuda/launchers.hpp, not installed).
  friend struct detail::PartitionArrays;

  kernels::Partition host_;
  DeviceArray<kernels::Piece> pieces_;
  DeviceArray<uint32_t> block_first_, layer_first_, all_pieces_;
  DeviceArray<uint64_t> layer_start_;
  DeviceArray<double> lanes_;
  DeviceArray<int> flag_;
};

// Where a compression pass puts its total: the sum of squares and/or the scale of §1,
// scale_from_sum(sum, part.size()). Device pointers; either may be null.
struct SumOut {
  double* sum_sq = nullptr;
  float* scale = nullptr;
};

// --- compression (docs/algorithm.md §1, §2); as kernels::compress etc., with device scalars ----------------
// Bit buffers are 4-byte aligned; element i is bit i%8 of byte i/8 (the CPU layout).

void compress(const DevicePartition& part, const float* x, const float* prev, const float* prev_scale,
              float* next, uint8_t* bits, SumOut out, Stream stream, const int* skip = nullptr);

// k: per-layer device array, or null for k = 1.
void compress_momentum(const DevicePartition& part, const float* m, const float* g, float beta1,
                       const float* k, const float* prev, const float* prev_scale, float* next,
                       uint8_t* bits, SumOut out, Stream stream, const int* skip = nullptr);

// worker_scales: `world` device floats. Skips, and sets *set_skip (if given), when one of them is
// not finite: the non-finite check of §6 without a host round trip.
void server_average(const DevicePartition& part, const uint8_t* worker_bits, size_t stride,
                    const float* worker_scales, int world, float* f, const float* f_scale,
                    uint8_t* out_bits, SumOut out, Stream stream, int* set_skip = nullptr);

void decode(const DevicePartition& part, const uint8_t* bits, const float* chunk_scales, float* out,
            Stream stream, const int* skip = nullptr);

// --- optimizers (docs/algorithm.md §3-§5); per-layer outputs are device arrays of num_layers() -------------

void lamb_norms(const DevicePartition& part, const float* g, const float* m, const float* v,
                const float* w, const kernels::MomentParams& p, double* w_sq, double* u_sq,
                Stream stream, const int* skip = nullptr);

void lamb_update(const DevicePartition& part, const float* g, float* m, float* v, float* w,
                 const kernels::MomentParams& p, const float* coef, Stream stream,
                 const int* skip = nullptr);

// masks: null, or a device array of num_layers() device pointers (each null or the layer's mask).
void onebit_lamb_norms(const DevicePartition& part, const uint8_t* bits, const float* chunk_scales,
                       const float* k, const float* const* masks, const kernels::MomentParams& p,
                       float* m, const float* v, float* v_fresh, const float* w,
                       const kernels::OnebitLambSums& out, Stream stream, const int* skip = nullptr);

void frozen_update(const DevicePartition& part, const float* m, const float* v, float* w, float eps,
                   float weight_decay, const float* coef, Stream stream, const int* skip = nullptr);

// decode into m, then frozen_update, in one pass (1-bit Adam's compression step; the same bits
// as decode followed by frozen_update).
void decode_frozen_update(const DevicePartition& part, const uint8_t* bits, const float* chunk_scales,
                          float* m, const float* v, float* w, float eps, float weight_decay,
                          const float* coef, Stream stream, const int* skip = nullptr);

void layer_sq_norms(const DevicePartition& part, const float* x, double* out, Stream stream,
                    const int* skip = nullptr);

void divide(float* x, size_t n, float d, Stream stream, const int* skip = nullptr);
void copy(float* dst, const float* src, size_t n, Stream stream, const int* skip = nullptr);
void fill(float* x, size_t n, float value, Stream stream);

}  // namespace onebit::cuda
