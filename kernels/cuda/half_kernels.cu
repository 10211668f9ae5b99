// CUDA kernels of the 16-bit warmup exchange (docs/algorithm.md §11): round, average a served chunk,
// widen; comm/half_allreduce.cpp's loops with the very same conversion functions (onebit/kernels.hpp).
#include "cuda_check.hpp"
#include "half_kernels.hpp"
#include "tile.cuh"

namespace onebit::cuda {
namespace detail {
namespace {

// The conversions are constexpr host functions; --expt-relaxed-constexpr (ONEBIT_CUDA_FLAGS) lets
// device code call them, so the GPU rounds with the CPU's integer code, not a copy of it.
static_assert(to_fp16(65520.0f) == 0x7C00u && to_bf16(1.0f) == 0x3F80u && from_fp16(0x0001u) == 0x1p-24f,
              "the pinned 16-bit conversions must stay constexpr: the CUDA kernels call them");

template <bool kBf16>
struct Half {
  __device__ static uint16_t round(float f) {
    if constexpr (kBf16) return to_bf16(f);
    else return to_fp16(f);
  }
  __device__ static float widen(uint16_t h) {
    if constexpr (kBf16) return from_bf16(h);
    else return from_fp16(h);
  }
};

template <bool kBf16>
__global__ void round_kernel(const float* x, uint16_t* out, size_t n) {
  for (size_t i = blockIdx.x * size_t{kFlatThreads} + threadIdx.x; i < n; i += size_t{gridDim.x} * kFlatThreads)
    out[i] = Half<kBf16>::round(x[i]);
}

// One element per thread, its P values summed in rank order (the CPU's order, so the same bits);
// the loads of one rank's chunk are coalesced across the warp.
template <bool kBf16>
__global__ void average_kernel(const uint16_t* received, size_t chunk, int world, uint16_t* out) {
  const float pf = static_cast<float>(world);
  for (size_t i = blockIdx.x * size_t{kFlatThreads} + threadIdx.x; i < chunk; i += size_t{gridDim.x} * kFlatThreads) {
    float s = Half<kBf16>::widen(received[i]);
    for (int p = 1; p < world; ++p) s += Half<kBf16>::widen(received[static_cast<size_t>(p) * chunk + i]);
    out[i] = Half<kBf16>::round(s / pf);
  }
}

template <bool kBf16>
__global__ void widen_kernel(const uint16_t* h, float* out, size_t n) {
  for (size_t i = blockIdx.x * size_t{kFlatThreads} + threadIdx.x; i < n; i += size_t{gridDim.x} * kFlatThreads)
    out[i] = Half<kBf16>::widen(h[i]);
}

bool is_bf16(WirePrecision precision, const char* what) {
  ONEBIT_CHECK(precision != WirePrecision::kFp32, "cuda " << what << ": needs bf16 or fp16, got fp32");
  return precision == WirePrecision::kBf16;
}

}  // namespace
}  // namespace detail

using namespace detail;

void round_to_half(const float* x, uint16_t* out, size_t n, WirePrecision precision, Stream stream) {
  const bool bf16 = is_bf16(precision, "round_to_half");
  if (n == 0) return;
  if (bf16)
    round_kernel<true><<<flat_blocks(n), kFlatThreads, 0, stream>>>(x, out, n);
  else
    round_kernel<false><<<flat_blocks(n), kFlatThreads, 0, stream>>>(x, out, n);
  CUDA_CHECK_LAUNCH("round_to_half");
}

void average_half_chunks(const uint16_t* received, size_t chunk, int world, uint16_t* out,
                         WirePrecision precision, Stream stream) {
  const bool bf16 = is_bf16(precision, "average_half_chunks");
  ONEBIT_CHECK(world >= 1, "cuda average_half_chunks: world size " << world);
  if (chunk == 0) return;
  if (bf16)
    average_kernel<true><<<flat_blocks(chunk), kFlatThreads, 0, stream>>>(received, chunk, world, out);
  else
    average_kernel<false><<<flat_blocks(chunk), kFlatThreads, 0, stream>>>(received, chunk, world, out);
  CUDA_CHECK_LAUNCH("average_half_chunks");
}

void widen_half(const uint16_t* h, float* out, size_t n, WirePrecision precision, Stream stream) {
  const bool bf16 = is_bf16(precision, "widen_half");
  if (n == 0) return;
  if (bf16)
    widen_kernel<true><<<flat_blocks(n), kFlatThreads, 0, stream>>>(h, out, n);
  else
    widen_kernel<false><<<flat_blocks(n), kFlatThreads, 0, stream>>>(h, out, n);
  CUDA_CHECK_LAUNCH("widen_half");
}

}  // namespace onebit::cuda
