// The 16-bit warmup exchange on the GPU: comm/half_allreduce.cpp step for step (round, all-to-all,
// average the served chunk in rank order, all-gather, widen), on device buffers.
#include "cuda_half_allreduce.hpp"

#include "cuda_check.hpp"
#include "device_collectives.hpp"
#include "half_kernels.hpp"

namespace onebit::cuda {

CudaHalfAllreduce::CudaHalfAllreduce(DeviceCollectives& coll, size_t n, WirePrecision precision)
    : coll_(coll), n_(n), precision_(precision) {
  ONEBIT_CHECK(precision != WirePrecision::kFp32,
               "cuda 16-bit allreduce on rank " << coll.comm().rank() << ": needs bf16 or fp16, got fp32");
  const auto P = static_cast<size_t>(coll.comm().size());
  const size_t chunk = (n + P - 1) / P;
  wire_ = DeviceArray<uint16_t>(chunk * P);
  received_ = DeviceArray<uint16_t>(chunk * P);
  mine_ = DeviceArray<uint16_t>(chunk);
  // The padding past x goes on the wire and is never read back; zeros keep it defined.
  wire_.zero(coll.stream());
}

CudaHalfAllreduce::~CudaHalfAllreduce() {
  (void)cudaStreamSynchronize(coll_.stream());  // nothing in flight may outlive the buffers
}

void CudaHalfAllreduce::average(float* x, size_t count) {
  ONEBIT_CHECK(count <= n_, "cuda 16-bit allreduce on rank " << coll_.comm().rank() << ": " << count
                                << " elements, built for at most " << n_);
  if (coll_.comm().size() == 1) return;  // as HalfAllreduce: nothing to average, nothing rounded
  const int world = coll_.comm().size();
  const auto P = static_cast<size_t>(world);
  const size_t chunk = (count + P - 1) / P;  // the CPU's chunks for this count
  const Stream s = coll_.stream();
  round_to_half(x, wire_.data(), count, precision_, s);
  coll_.alltoall(wire_.data(), received_.data(), chunk * P * sizeof(uint16_t));
  // This rank serves chunk rank(): the sum runs over ranks in order, so it is the CPU's on any backend.
  average_half_chunks(received_.data(), chunk, world, mine_.data(), precision_, s);
  coll_.allgather(mine_.data(), received_.data(), chunk * sizeof(uint16_t));
  widen_half(received_.data(), x, count, precision_, s);
}

}  // namespace onebit::cuda
