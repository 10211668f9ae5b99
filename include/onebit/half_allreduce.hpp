// HalfAllreduce: the warmup exchange in 16 bits (docs/algorithm.md §11). Every rank rounds its
// gradient to bf16 or fp16, rank j sums chunk j of every rank's values in fp32 (in rank order) and
// divides by P, rounds the average to 16 bits and sends it to all: half the bytes of an fp32
// allreduce, and the same bits on every rank.
#pragma once
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "onebit/communicator.hpp"
#include "onebit/kernels.hpp"
#include "onebit/thread_pool.hpp"

namespace onebit {

// WirePrecision and the pinned conversions to_bf16 / from_bf16 / to_fp16 / from_fp16 are in
// onebit/kernels.hpp (the CUDA kernels below comm/ share them).

// "fp32", "bf16", "fp16".
const char* to_string(WirePrecision p);
// Throws onebit::Error naming the valid names.
WirePrecision parse_wire_precision(const std::string& name);
// Bytes one value takes on the wire: 4 for fp32, 2 for bf16 and fp16.
inline constexpr int wire_bytes(WirePrecision p) { return p == WirePrecision::kFp32 ? 4 : 2; }

// Built for at most n elements and a 16-bit precision (not kFp32).
class HalfAllreduce {
 public:
  HalfAllreduce(Communicator& comm, ThreadPool& pool, size_t n, WirePrecision precision);

  // Averages x (at most n elements) over all ranks in place: every rank ends with the same bits.
  // Each element's result depends on that element alone (the sum runs over ranks in order), so
  // averaging a buffer in pieces gives the bits of averaging it whole. A NaN or infinity on any
  // rank (or an fp16 overflow) shows as a non-finite value in every rank's result. One rank sends
  // nothing and leaves x as it is, as the fp32 exchange does.
  void average(std::span<float> x);

  size_t size() const { return n_; }
  WirePrecision precision() const { return precision_; }

 private:
  Communicator& comm_;
  ThreadPool& pool_;
  size_t n_;
  WirePrecision precision_;
  std::vector<uint16_t> wire_, received_, mine_;
};

}  // namespace onebit
