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
// the scratch is shared by every kernel launched over this partition. num_groups: how many scales
// the partition's scale groups index (Piece::group < num_groups; 0: one past the largest group),
// so that a pass can give every group its scale; a group no piece covers gets scale 0.
class DevicePartition {
 public:
  DevicePartition() = default;
  explicit DevicePartition(const kernels::Partition& part, size_t num_groups = 0);

  const kernels::Partition& host() const { return host_; }
  size_t size() const { return host_.size(); }
  size_t num_layers() const { return host_.num_layers(); }
  size_t num_pieces() const { return host_.pieces().size(); }
  size_t num_blocks() const { return host_.num_blocks(); }
  size_t num_groups() const { return num_groups_; }

 private:
  // The device arrays below are launch details: the launchers in kernels/cuda reach them through
  // detail::PartitionArrays (kernels/cuda/launchers.hpp, not installed).
  friend struct detail::PartitionArrays;

  kernels::Partition host_;
  size_t num_groups_ = 0;
  DeviceArray<kernels::Piece> pieces_;
  DeviceArray<uint32_t> block_first_, layer_first_, all_pieces_, group_first_;
  DeviceArray<uint64_t> layer_start_, group_size_;
  DeviceArray<double> lanes_;
  DeviceArray<int> flag_;
};

// Where a compression pass puts its scales (device pointers): `scales` receives the scale of §1,
// scale_from_sum(sum of squares, elements), of the whole buffer (per_group false: one value) or of
// each scale group (num_groups() values, docs/algorithm.md §12). sum_sq, if given, receives the
// sum of squares of the whole buffer.
struct ScalesOut {
  float* scales = nullptr;
  bool per_group = false;
  double* sum_sq = nullptr;
};

// The scales a pass reads (device pointer): one value for the whole buffer, or one per scale group.
struct ScalesIn {
  const float* scales = nullptr;
  bool per_group = false;
};

// --- compression (docs/algorithm.md §1, §2); as kernels::compress etc., with device scalars ----------------
// Bit buffers are 4-byte aligned; element i is bit i%8 of byte i/8 (the CPU layout).
//
// A kernels::Momentum here holds device pointers (masks: a device array of num_layers() device
// pointers, each null or the layer's mask): the momentum as a plain buffer, or as the sign bits and
// per-group scales of the last exchange (the CPU's form, docs/algorithm.md §4 step 5), read at 1/8
// byte per element and never written. A Momentum with bits must come with the allreduce's partition.

void compress(const DevicePartition& part, const float* x, const float* prev, ScalesIn prev_scales,
              float* next, uint8_t* bits, ScalesOut out, Stream stream, const int* skip = nullptr);

// x = (beta1*m + (1-beta1)*g) * k[layer], formed on the fly. k: per-layer device array, or null for k = 1.
void compress_momentum(const DevicePartition& part, const kernels::Momentum& m, const float* g, float beta1,
                       const float* k, const float* prev, ScalesIn prev_scales, float* next, uint8_t* bits,
                       ScalesOut out, Stream stream, const int* skip = nullptr);

// worker_scales: per scale group (per_group) or once, `world` device floats each, rank p's scale of
// group q at [p * groups + q] (groups = 1 when not per_group). With one scale per worker, skips and
// sets *set_skip (if given) when one of them is not finite: the non-finite check of §6 without a
// host round trip. Per group, a rank holds only its chunk's scales: the caller checks finiteness.
void server_average(const DevicePartition& part, const uint8_t* worker_bits, size_t stride,
                    ScalesIn worker_scales, int world, float* f, ScalesIn f_scales, uint8_t* out_bits,
                    ScalesOut out, Stream stream, int* set_skip = nullptr);

// out[i] = scales[group of i] * sign(bit i)   (scales: one per scale group).
void decode(const DevicePartition& part, const uint8_t* bits, const float* scales, float* out,
            Stream stream, const int* skip = nullptr);

// out[i] = m[i], written out.
void decode_momentum(const DevicePartition& part, const kernels::Momentum& m, float* out, Stream stream,
                     const int* skip = nullptr);

// Error state rescaled per layer and made plain (tracked scales, docs/algorithm.md §10): every
// c[i] <- (c[i] - s*sign(c[i])) * (num[layer] / den[layer]), s the scale of i's group and layer the
// piece's; the caller then takes the scales as 0. num, den: per-layer device arrays.
void rescale_errors(const DevicePartition& part, float* c, ScalesIn scales, const float* ratio_num,
                    const float* ratio_den, Stream stream, const int* skip = nullptr);

// --- optimizers (docs/algorithm.md §3-§5); per-layer outputs are device arrays of num_layers() -------------

void lamb_norms(const DevicePartition& part, const float* g, const float* m, const float* v,
                const float* w, const kernels::MomentParams& p, double* w_sq, double* u_sq,
                Stream stream, const int* skip = nullptr);

void lamb_update(const DevicePartition& part, const float* g, float* m, float* v, float* w,
                 const kernels::MomentParams& p, const float* coef, Stream stream,
                 const int* skip = nullptr);

// 1-bit LAMB §4 steps 6-7 and the reductions of step 8, one pass (kernels::onebit_lamb_norms), with
// d = sqrt(v) + eps computed in place of the CPU's stored frozen denominator (the same bits).
void onebit_lamb_norms(const DevicePartition& part, const kernels::Momentum& m, const kernels::Momentum& m_prev,
                       const kernels::MomentParams& p, const float* v, float* v_fresh, const float* w,
                       const kernels::OnebitLambSums& out, Stream stream, const int* skip = nullptr);

// w <- w - coef[layer] * (m/(sqrt(v)+eps) + wd*w).
void frozen_update(const DevicePartition& part, const kernels::Momentum& m, const float* v, float* w, float eps,
                   float weight_decay, const float* coef, Stream stream, const int* skip = nullptr);

// Per layer, sum of w^2 and of u^2 with u = m/(sqrt(v)+eps) + wd*w (1-bit LAMB's refresh step).
void frozen_norms(const DevicePartition& part, const float* m, const float* v, const float* w, float eps,
                  float weight_decay, double* w_sq, double* u_sq, Stream stream, const int* skip = nullptr);

void layer_sq_norms(const DevicePartition& part, const float* x, double* out, Stream stream,
                    const int* skip = nullptr);

void divide(float* x, size_t n, float d, Stream stream, const int* skip = nullptr);
void copy(float* dst, const float* src, size_t n, Stream stream, const int* skip = nullptr);
void fill(float* x, size_t n, float value, Stream stream, const int* skip = nullptr);

}  // namespace onebit::cuda
