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

// Per-segment sums of the lanes the last tile kernel over `part` left: per layer, or total.
template <int S, int kMaxSlot>
void launch_reduce(const DevicePartition& part, bool per_layer, const SegOut<S>& out, Stream stream,
                   const int* skip, const char* what) {
  const size_t segments = per_layer ? part.num_layers() : 1;
  if (segments == 0) return;
  reduce_kernel<S, kMaxSlot><<<static_cast<unsigned>(segments), kReduceThreads, 0, stream>>>(
      PartitionArrays::lanes(part), static_cast<uint32_t>(part.num_pieces()),
      per_layer ? PartitionArrays::layer_first(part) : PartitionArrays::all_pieces(part), out, skip);
  CUDA_CHECK_LAUNCH(what);
}

}  // namespace onebit::cuda::detail
