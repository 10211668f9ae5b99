// The passes of the 16-bit warmup exchange on the device (docs/algorithm.md §11), twins of the
// loops in comm/half_allreduce.cpp. Private to onebit (comm/cuda's CudaHalfAllreduce); needs no CUDA headers.
#pragma once
#include <cstddef>
#include <cstdint>

#include "onebit/cuda_kernels.hpp"  // Stream
#include "onebit/kernels.hpp"       // WirePrecision and the pinned conversions

namespace onebit::cuda {

// out[i] = round16(x[i]) for i < n, with to_bf16 or to_fp16. precision is bf16 or fp16.
void round_to_half(const float* x, uint16_t* out, size_t n, WirePrecision precision, Stream stream);

// The serving rank's step: received holds `world` chunks of `chunk` words, rank p's at p * chunk.
// out[i] = round16(s / world) for i < chunk, with s = widen(received[i]) + widen(received[chunk + i])
// + ... in rank order, in fp32: comm/half_allreduce.cpp's sum, operation for operation.
void average_half_chunks(const uint16_t* received, size_t chunk, int world, uint16_t* out,
                         WirePrecision precision, Stream stream);

// out[i] = widen(h[i]) for i < n, with from_bf16 or from_fp16.
void widen_half(const uint16_t* h, float* out, size_t n, WirePrecision precision, Stream stream);

}  // namespace onebit::cuda
