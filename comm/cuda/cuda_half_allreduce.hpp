// CudaHalfAllreduce: the 16-bit warmup exchange (docs/algorithm.md §11) on device buffers, the twin of
// onebit/half_allreduce.hpp's HalfAllreduce, bit for bit. Private to onebit (optim/cuda's optimizers).
#pragma once
#include <cstddef>
#include <cstdint>

#include "onebit/cuda_kernels.hpp"
#include "onebit/half_allreduce.hpp"

namespace onebit::cuda {

class DeviceCollectives;  // device_collectives.hpp

// Built for at most n elements and a 16-bit precision (not kFp32), over `coll`, which must outlive it.
class CudaHalfAllreduce {
 public:
  CudaHalfAllreduce(DeviceCollectives& coll, size_t n, WirePrecision precision);
  ~CudaHalfAllreduce();
  CudaHalfAllreduce(const CudaHalfAllreduce&) = delete;
  CudaHalfAllreduce& operator=(const CudaHalfAllreduce&) = delete;

  // Averages x[0, count) (device memory, count <= n) over all ranks in place, enqueued on
  // coll.stream(): the bits HalfAllreduce::average gives for the same inputs, on every rank. A NaN
  // or infinity on any rank (or an fp16 overflow) shows as a non-finite value in every rank's
  // result, for the LAMB pass after it to skip on. One rank leaves x as it is.
  void average(float* x, size_t count);

  size_t size() const { return n_; }
  WirePrecision precision() const { return precision_; }

 private:
  DeviceCollectives& coll_;
  size_t n_;
  WirePrecision precision_;
  // As HalfAllreduce's: P chunks of ceil(n/P) words sent and received, and the chunk this rank serves.
  DeviceArray<uint16_t> wire_, received_, mine_;
};

}  // namespace onebit::cuda
