// Host-side launch helpers shared by the kernel files: the device view of a partition, and the
// tile / element-wise / reduce launches with their error checks.
#pragma once
#include <cstddef>
#include <cstdint>

#include "cuda_check.hpp"
#include "launchers.hpp"
#include "onebit/cuda_kernels.hpp"
#include "tile.cuh"

namespace onebit::cuda::detail {

// The device reads the host's kernels::Piece array as it was uploaded: the two must not drift apart
// (a field added on the host once shifted every piece the device read).
static_assert(sizeof(Piece) == sizeof(kernels::Piece) && offsetof(Piece, end) == offsetof(kernels::Piece, end) &&
                  offsetof(Piece, layer) == offsetof(kernels::Piece, layer) &&
                  offsetof(Piece, chunk) == offsetof(kernels::Piece, chunk) &&
                  offsetof(Piece, group) == offsetof(kernels::Piece, group),
              "kernels/cuda/tile.cuh's Piece must mirror kernels::Piece");

inline PartView view(const DevicePartition& p) {
  using A = PartitionArrays;
  return {static_cast<const Piece*>(A::pieces(p)), A::block_first(p), A::layer_start(p), p.size(),
          static_cast<uint32_t>(p.num_pieces())};
}

inline void check_word_aligned(const void* bits, const char* what) {
  ONEBIT_CHECK(reinterpret_cast<uintptr_t>(bits) % 4 == 0,
               "cuda " << what << ": the bit buffer must be 4-byte aligned");
}

template <class Op>
void launch_tile(const DevicePartition& part, const Op& op, Stream stream, const int* skip,
                 const char* what) {
  if (part.num_blocks() == 0) return;
  const size_t chains = part.num_blocks() * 16;
  tile_kernel<Op><<<static_cast<unsigned>((chains + kChainThreads - 1) / kChainThreads), kChainThreads, 0, stream>>>(
      view(part), op, PartitionArrays::lanes(part), skip, part.num_blocks());
  CUDA_CHECK_LAUNCH(what);
}

template <class Op>
void launch_elementwise(const DevicePartition& part, const Op& op, Stream stream, const int* skip,
                        const char* what) {
  if (part.num_blocks() == 0) return;
  elementwise_kernel<Op><<<static_cast<unsigned>(part.num_blocks()), kWorkers, 0, stream>>>(
      view(part), op, skip);
  CUDA_CHECK_LAUNCH(what);
}

// What launch_reduce adds up: the whole buffer, each layer, or each scale group.
enum class Segments { kTotal, kLayers, kGroups };

// Per-segment sums of the lanes the last tile kernel over `part` left.
template <int S, int kMaxSlot>
void launch_reduce(const DevicePartition& part, Segments seg, const SegOut<S>& out, Stream stream,
                   const int* skip, const char* what) {
  using A = PartitionArrays;
  const size_t segments = seg == Segments::kLayers ? part.num_layers()
                          : seg == Segments::kGroups ? part.num_groups()
                                                     : 1;
  if (segments == 0) return;
  const uint32_t* first = seg == Segments::kLayers ? A::layer_first(part)
                          : seg == Segments::kGroups ? A::group_first(part)
                                                     : A::all_pieces(part);
  reduce_kernel<S, kMaxSlot><<<static_cast<unsigned>(segments), kReduceThreads, 0, stream>>>(
      A::lanes(part), static_cast<uint32_t>(part.num_pieces()), first, out, skip);
  CUDA_CHECK_LAUNCH(what);
}

// The scales (and total) of a compression pass from its lanes (ScalesOut, onebit/cuda_kernels.hpp).
inline void launch_scales(const DevicePartition& part, const ScalesOut& out, Stream stream, const int* skip,
                          const char* what) {
  if (out.per_group) {
    launch_reduce<1, -1>(part, Segments::kGroups, SegOut<1>{{nullptr}, nullptr, out.scales, 0, PartitionArrays::group_size(part)},
                         stream, skip, what);
    if (out.sum_sq)
      launch_reduce<1, -1>(part, Segments::kTotal, SegOut<1>{{out.sum_sq}, nullptr, nullptr, 0, nullptr}, stream, skip,
                           what);
  } else {
    launch_reduce<1, -1>(part, Segments::kTotal, SegOut<1>{{out.sum_sq}, nullptr, out.scales, part.size(), nullptr},
                         stream, skip, what);
  }
}

// kernels::Momentum over one piece, as the CPU's momentum_piece: sk = group scale / k, exact as §4
// step 5 asks, since (s * sign) / k = sign * (s / k) in IEEE arithmetic.
struct MomentumView {
  kernels::Momentum m;
  float sk;
  const float* mask;
  size_t mask_base;

  __device__ void enter(const Piece& p, const PartView& part) {
    if (m.values) return;
    sk = m.scales[p.group] / (m.k ? m.k[p.layer] : 1.0f);
    mask = m.masks ? m.masks[p.layer] : nullptr;
    mask_base = part.layer_start[p.layer];
  }
  // The value itself is the load: one register per row loaded ahead, not a bit, a mask and a value
  // (with two momenta in one pass, those spilled). The same operations as the CPU's momentum().
  using In = float;
  __device__ float load(size_t i) const {
    if (m.values) return m.values[i];
    const float x = pm(get_bit(m.bits, i), sk);
    return mask ? x * mask[i - mask_base] : x;
  }
};
inline MomentumView momentum_view(const kernels::Momentum& m) { return {m, 0.0f, nullptr, 0}; }

}  // namespace onebit::cuda::detail
