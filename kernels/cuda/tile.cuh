// The launch shapes every CUDA kernel shares, and the reduction that reproduces the CPU's pinned
// sum order: one thread block per Partition block (kBlock elements), elements in coalesced order,
// and per-(piece, lane) sums walked in element order by dedicated "summer" threads.
//
// Why summers: the CPU adds x^2 for lane i%16 in element order within each piece, folds the 16
// lanes, then adds the pieces in order. Double addition does not reassociate, so each lane of each
// piece is one sequential chain. Workers compute a tile of 1024 elements coalesced and leave the
// values to be squared in shared memory; 16 summer threads per sum walk the tile's 64 rows of 16 while
// the workers compute the next tile (double-buffered). Blocks are small and many, so the chains'
// latency hides behind other blocks' memory traffic.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace onebit::cuda::detail {

constexpr size_t kBlock = size_t{1} << 15;  // kernels::Partition::kBlock
constexpr int kWorkers = 256;
constexpr int kTile = 1024;
constexpr int kRows = kTile / 16;
constexpr int kPad = 16;  // shifts each sum's shared row by 16 banks: two half-warps never collide

struct Piece {  // kernels::Piece, as laid out on the host
  size_t begin, end;
  uint32_t layer, chunk;
};
static_assert(sizeof(Piece) == 24, "kernels::Piece layout");

struct PartView {
  const Piece* pieces;
  const uint32_t* block_first;
  const uint64_t* layer_start;
  size_t n;
  uint32_t num_pieces;
};

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
//   kBits: element() returns the sign bit, stored to op.bits; kPieces: op.enter(piece) is called
//   before the first element of each piece (per-layer and per-chunk parameters)
//   void begin() at kernel start (reads device scalars); In load(i);
//   bool compute(i, const In&, float (&v)[kSlots])
template <class Op>
struct TileShape {
  static constexpr int kSummers = (Op::kSlots * 16 + 31) / 32 * 32;
  static constexpr int kThreads = kWorkers + kSummers;
};

template <class Op>
__device__ __forceinline__ void store_word(Op& op, size_t i, size_t end, unsigned word) {
  // Lane 0 holds the warp's first element, a multiple of 32. Only the buffer's last word can be
  // partial; its bits past the end are left as they were (as the CPU leaves them).
  uint32_t* words = reinterpret_cast<uint32_t*>(op.bits);
  if (i + 32 <= end) {
    words[i / 32] = word;
  } else {
    const uint32_t mask = (1u << (end - i)) - 1u;
    words[i / 32] = (words[i / 32] & ~mask) | (word & mask);
  }
}

template <class Op>
__global__ void __launch_bounds__(TileShape<Op>::kThreads)
tile_kernel(PartView part, Op op, double* lanes, const int* skip) {
  constexpr int S = Op::kSlots;
  __shared__ float vals[2][S][kTile + kPad];
  if (skip && *skip) return;
  op.begin();
  const size_t base = static_cast<size_t>(blockIdx.x) * kBlock;
  const size_t end = min(base + kBlock, part.n);
  const uint32_t p_first = part.block_first[blockIdx.x], p_last = part.block_first[blockIdx.x + 1];
  const int tiles = static_cast<int>((end - base + kTile - 1) / kTile);
  const int tid = threadIdx.x;

  // Worker state: the piece of the worker's current element.
  uint32_t wp = p_first;
  size_t wp_end = part.pieces[wp].end;
  if constexpr (Op::kPieces) op.enter(part.pieces[wp], part);
  // Summer state: slot, lane (column), current piece and the running lane sum.
  const int slot = (tid - kWorkers) / 16, col = tid & 15;
  uint32_t sp = p_first;
  size_t sp_end = wp_end;
  double acc = 0.0;
  float mx = 0.0f;
  auto emit = [&] {
    lanes[(static_cast<size_t>(slot) * part.num_pieces + sp) * 16 + col] =
        slot == Op::kMaxSlot ? static_cast<double>(mx) : acc;
    acc = 0.0;
    mx = 0.0f;
  };

  for (int t = 0; t <= tiles; ++t) {
    if (tid < kWorkers) {
      if (t < tiles) {
        const size_t tile_base = base + static_cast<size_t>(t) * kTile;
        float(*buf)[kTile + kPad] = vals[t & 1];
        constexpr int K = kTile / kWorkers;
        // Warp-uniform choice: both paths vote, and a vote must be reached by the whole warp.
        if (__all_sync(0xffffffffu, tile_base + kTile <= min(wp_end, end))) {
          // Fast path: the whole tile lies in the current piece; loads first, for memory parallelism.
          typename Op::In in[K];
#pragma unroll
          for (int k = 0; k < K; ++k) in[k] = op.load(tile_base + k * kWorkers + tid);
#pragma unroll
          for (int k = 0; k < K; ++k) {
            const size_t i = tile_base + k * kWorkers + tid;
            float v[S];
            const bool bit = op.compute(i, in[k], v);
#pragma unroll
            for (int s = 0; s < S; ++s) buf[s][k * kWorkers + tid] = v[s];
            if constexpr (Op::kBits) {
              const unsigned word = __ballot_sync(0xffffffffu, bit);
              if ((tid & 31) == 0) store_word(op, i, end, word);
            }
          }
        } else {
#pragma unroll
          for (int k = 0; k < K; ++k) {
            const size_t i = tile_base + k * kWorkers + tid;
            float v[S];
#pragma unroll
            for (int s = 0; s < S; ++s) v[s] = 0.0f;
            bool bit = false;
            if (i < end) {
              while (i >= wp_end) {
                wp_end = part.pieces[++wp].end;
                if constexpr (Op::kPieces) op.enter(part.pieces[wp], part);
              }
              bit = op.compute(i, op.load(i), v);
            }
#pragma unroll
            for (int s = 0; s < S; ++s) buf[s][k * kWorkers + tid] = v[s];
            if constexpr (Op::kBits) {
              const unsigned word = __ballot_sync(0xffffffffu, bit);
              if ((tid & 31) == 0 && i < end) store_word(op, i, end, word);
            }
          }
        }
      }
    } else if (t > 0 && slot < S) {
      const size_t tile_base = base + static_cast<size_t>(t - 1) * kTile;
      const float* row = vals[(t - 1) & 1][slot];
      for (int r = 0; r < kRows; ++r) {
        const size_t i = tile_base + r * 16 + col;
        if (i >= end) break;
        while (i >= sp_end) {
          emit();
          sp_end = part.pieces[++sp].end;
        }
        const float x = row[r * 16 + col];
        if (slot == Op::kMaxSlot) {
          mx = max_lane(x, mx);
        } else {
          acc += sq(x);
        }
      }
    }
    __syncthreads();
  }
  // Every (piece, lane) of the block gets exactly one value, 0 where the lane has no element.
  if (tid >= kWorkers && slot < S)
    for (; sp < p_last; ++sp) emit();
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
  double* sum[S];      // per segment, or null
  float* max;          // the kMaxSlot result per segment, or null
  float* scale;        // segment 0's scale_from_sum(sum[0], n), or null
  size_t n;
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
      if (tid == 0 && out.scale)
        out.scale[blockIdx.x] =
            out.n == 0 ? 0.0f : static_cast<float>(sqrt(acc / static_cast<double>(out.n)));
    }
  }
}

}  // namespace onebit::cuda::detail
