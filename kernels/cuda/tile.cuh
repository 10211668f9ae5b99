// The launch shapes every CUDA kernel shares, and the reduction that reproduces the CPU's pinned
// sum order.
//
// The CPU adds x^2 for lane i%16 in element order within each piece (a piece never crosses a
// Partition block of kBlock elements), folds the 16 lanes, then adds the pieces in order. Double
// addition does not reassociate, so each (piece, lane) is one sequential chain. tile_kernel gives
// every (block, lane) chain its own thread, which computes its elements and sums them in order:
// no shared memory and no barriers. A half-warp walks one block's rows of 16 consecutive elements
// (64 bytes per array, whole 32-byte sectors); its 16 sign bits are one 16-bit store from a warp
// vote. A BERT-Large buffer is 164K chains, about one resident wave on an H100.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace onebit::cuda::detail {

constexpr size_t kBlock = size_t{1} << 15;  // kernels::Partition::kBlock
constexpr int kRowsPerBlock = static_cast<int>(kBlock / 16);
constexpr int kWorkers = 256;       // threads per CUDA block of the element-wise kernel
constexpr int kChainThreads = 256;  // threads per CUDA block of tile_kernel: 16 Partition blocks

struct Piece {  // kernels::Piece, as laid out on the host (launch.cuh checks the two agree)
  size_t begin, end;
  uint32_t layer, chunk, group;
};

struct PartView {
  const Piece* pieces;
  const uint32_t* block_first;
  const uint64_t* layer_start;
  size_t n;
  uint32_t num_pieces;
};

// The flat kernels' grid-stride launch: kFlatThreads per block, at most 4096 blocks.
constexpr int kFlatThreads = 256;
inline unsigned flat_blocks(size_t n) {
  const size_t b = (n + kFlatThreads - 1) / kFlatThreads;
  return static_cast<unsigned>(b < 4096 ? b : 4096);
}

__device__ __forceinline__ float pm(bool bit, float s) { return bit ? s : -s; }
__device__ __forceinline__ bool get_bit(const uint8_t* bits, size_t i) {
  return (bits[i >> 3] >> (i & 7)) & 1;
}
__device__ __forceinline__ double sq(float x) {
  return static_cast<double>(x) * static_cast<double>(x);
}
__device__ __forceinline__ float max_lane(float x, float m) { return x > m ? x : m; }  // CPU's rule

// Op for tile_kernel:
//   kSlots: values per element to reduce (1..4); kMaxSlot: the slot reduced by max (or -1)
//   kBits: compute() returns the sign bit, stored to op.bits; kPieces: op.enter(piece) is called
//   before the first element of each piece (per-layer and per-chunk parameters)
//   void begin() at kernel start (reads device scalars); In load(i) (every global read; loads of
//   several rows are issued before any compute); bool compute(i, const In&, float (&v)[kSlots])
template <class Op>
__device__ __forceinline__ void store_row_bits(Op& op, size_t row, size_t end, unsigned bits16) {
  // row: the index of the row's first element, a multiple of 16. Only the buffer's last row can be
  // partial; its bits past the end are left as they were (as the CPU leaves them).
  uint16_t* rows = reinterpret_cast<uint16_t*>(op.bits);
  if (row + 16 <= end) {
    rows[row / 16] = static_cast<uint16_t>(bits16);
  } else {
    const unsigned mask = (1u << (end - row)) - 1u;
    rows[row / 16] = static_cast<uint16_t>((rows[row / 16] & ~mask) | (bits16 & mask));
  }
}

// One element's slots into the lane's sums (sum of squares) and its max slot.
template <int S, int MaxSlot>
__device__ __forceinline__ void accumulate(double (&acc)[S], float& mx, const float (&v)[S]) {
#pragma unroll
  for (int s = 0; s < S; ++s) {
    if (s == MaxSlot) {
      mx = max_lane(v[s], mx);
    } else {
      acc[s] += sq(v[s]);
    }
  }
}

template <class Op>
__global__ void __launch_bounds__(kChainThreads, 4)
tile_kernel(PartView part, Op op, double* lanes, const int* skip, size_t num_blocks) {
  constexpr int S = Op::kSlots;
  constexpr int U = sizeof(typename Op::In) <= 8 ? 8 : 4;  // rows loaded ahead per thread
  if (skip && *skip) return;
  const size_t b = (static_cast<size_t>(blockIdx.x) * kChainThreads + threadIdx.x) / 16;
  const int col = static_cast<int>(threadIdx.x & 15);
  // A half-warp past the last block has no elements but still takes part in the warp's votes.
  const bool active = b < num_blocks;
  const size_t base = b * kBlock;
  const size_t end = active ? min(base + kBlock, part.n) : base;
  uint32_t p = active ? part.block_first[b] : 0;
  const uint32_t p_last = active ? part.block_first[b + 1] : 0;
  size_t p_end = active ? part.pieces[p].end : 0;
  op.begin();
  if constexpr (Op::kPieces)
    if (active) op.enter(part.pieces[p], part);
  double acc[S];
  float mx = 0.0f;
  for (int s = 0; s < S; ++s) acc[s] = 0.0;
  // Every (piece, lane) of the block gets exactly one value, 0 where the lane has no element.
  auto emit = [&] {
    for (int s = 0; s < S; ++s) {
      lanes[(static_cast<size_t>(s) * part.num_pieces + p) * 16 + col] =
          s == Op::kMaxSlot ? static_cast<double>(mx) : acc[s];
      acc[s] = 0.0;
    }
    mx = 0.0f;
  };
  auto take = [&](const float (&v)[S]) { accumulate<S, Op::kMaxSlot>(acc, mx, v); };
  auto vote = [&](size_t row, bool bit, bool has) {
    const unsigned word = __ballot_sync(0xffffffffu, bit);
    if (col == 0 && has) store_row_bits(op, row, end, (word >> (threadIdx.x & 16)) & 0xffffu);
  };

  for (int r0 = 0; r0 < kRowsPerBlock; r0 += U) {
    const size_t row0 = base + static_cast<size_t>(r0) * 16;
    const size_t i0 = row0 + col;
    // Warp-uniform choice (the votes need the whole warp): every row of both half-warps lies in
    // the thread's current piece.
    if (__all_sync(0xffffffffu, i0 + (U - 1) * 16 < min(p_end, end))) {
      typename Op::In in[U];
#pragma unroll
      for (int u = 0; u < U; ++u) in[u] = op.load(i0 + u * 16);
#pragma unroll
      for (int u = 0; u < U; ++u) {
        float v[S];
        const bool bit = op.compute(i0 + u * 16, in[u], v);
        take(v);
        if constexpr (Op::kBits) vote(row0 + u * 16, bit, true);
      }
    } else {
      for (int u = 0; u < U; ++u) {
        const size_t i = i0 + u * 16;
        const bool has = i < end;
        bool bit = false;
        if (has) {
          while (i >= p_end) {
            emit();
            p_end = part.pieces[++p].end;
            if constexpr (Op::kPieces) op.enter(part.pieces[p], part);
          }
          float v[S];
          bit = op.compute(i, op.load(i), v);
          take(v);
        }
        if constexpr (Op::kBits) vote(row0 + u * 16, bit, row0 + u * 16 < end);
      }
    }
  }
  for (; p < p_last; ++p) emit();
}

// Element-wise pass (no sums): one block per Partition block, runs of elements within one piece.
// Op: begin(); In load(i); void compute(i, const In&); kPieces / enter(piece, part) as for tile_kernel.
template <class Op>
__global__ void __launch_bounds__(kWorkers) elementwise_kernel(PartView part, Op op, const int* skip) {
  if (skip && *skip) return;
  op.begin();
  const size_t base = static_cast<size_t>(blockIdx.x) * kBlock;
  const size_t end = min(base + kBlock, part.n);
  uint32_t p = part.block_first[blockIdx.x];
  size_t p_end = part.pieces[p].end;
  if constexpr (Op::kPieces) op.enter(part.pieces[p], part);
  size_t i = base + threadIdx.x;
  while (i < end) {
    while (i >= p_end) {
      p_end = part.pieces[++p].end;
      if constexpr (Op::kPieces) op.enter(part.pieces[p], part);
    }
    const size_t stop = min(p_end, end);
    constexpr size_t U = 4, step = kWorkers;
    for (; i + (U - 1) * step < stop; i += U * step) {
      typename Op::In in[U];
#pragma unroll
      for (size_t u = 0; u < U; ++u) in[u] = op.load(i + u * step);
#pragma unroll
      for (size_t u = 0; u < U; ++u) op.compute(i + u * step, in[u]);
    }
    for (; i < stop; i += step) op.compute(i, op.load(i));
  }
}

// Folds each piece's 16 lanes (in lane order) and adds the pieces of each segment in order: a
// segment is a layer (seg_first = layer_first) or the whole buffer (seg_first = {0, pieces}). One
// block per segment. The piece chain is sequential by definition (10k pieces for BERT-Large), so
// warps 1.. fold the next chunk of pieces while threads 0..S-1 of warp 0 chain the current one.
constexpr int kReduceThreads = 256;

template <int S>
struct SegOut {
  double* sum[S];  // per segment, or null
  float* max;      // the kMaxSlot result per segment, or null
  float* scale;    // per segment, scale_from_sum(sum[0], elements), or null
  size_t n;                // the elements of a segment, or
  const uint64_t* counts;  // when not null, those of each segment
};

template <int S, int kMaxSlot>
__global__ void __launch_bounds__(kReduceThreads)
reduce_kernel(const double* lanes, uint32_t num_pieces, const uint32_t* seg_first, SegOut<S> out,
              const int* skip) {
  constexpr uint32_t kChunk = S <= 2 ? 1024 : 512;  // 32 KiB of shared memory at most
  __shared__ double folded[2][S][kChunk];
  if (skip && *skip) return;
  const uint32_t first = seg_first[blockIdx.x], last = seg_first[blockIdx.x + 1];
  const uint32_t chunks = (last - first + kChunk - 1) / kChunk;
  const int tid = threadIdx.x;
  double acc = 0.0;
  float mx = 0.0f;
  for (uint32_t c = 0; c <= chunks; ++c) {
    if (tid >= 32 && c < chunks) {
      const uint32_t c0 = first + c * kChunk, count = min(last - c0, kChunk);
      for (uint32_t j = tid - 32; j < count * S; j += kReduceThreads - 32) {
        const int s = static_cast<int>(j / count);
        const uint32_t p = c0 + j % count;
        const double* l = lanes + (static_cast<size_t>(s) * num_pieces + p) * 16;
        double f = 0.0;
        if (s == kMaxSlot) {
          float m = 0.0f;
          for (int q = 0; q < 16; ++q) m = max_lane(static_cast<float>(l[q]), m);
          f = m;
        } else {
          for (int q = 0; q < 16; ++q) f += l[q];
        }
        folded[c & 1][s][j % count] = f;
      }
    } else if (tid < S && c > 0) {
      const uint32_t c0 = first + (c - 1) * kChunk, count = min(last - c0, kChunk);
      const double* f = folded[(c - 1) & 1][tid];
      if (tid == kMaxSlot) {
        for (uint32_t j = 0; j < count; ++j) {
          const float x = static_cast<float>(f[j]);
          mx = mx < x ? x : mx;  // std::max(mx, x)
        }
      } else {
        for (uint32_t j = 0; j < count; ++j) acc += f[j];
      }
    }
    __syncthreads();
  }
  if (tid < S) {
    if (tid == kMaxSlot) {
      if (out.max) out.max[blockIdx.x] = mx;
    } else {
      if (out.sum[tid]) out.sum[tid][blockIdx.x] = acc;
      if (tid == 0 && out.scale) {
        const uint64_t n = out.counts ? out.counts[blockIdx.x] : out.n;
        out.scale[blockIdx.x] = n == 0 ? 0.0f : static_cast<float>(sqrt(acc / static_cast<double>(n)));
      }
    }
  }
}

}  // namespace onebit::cuda::detail
