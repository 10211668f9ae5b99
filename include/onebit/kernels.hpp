// CPU kernels: the fused passes of the compressed allreduce and of the optimizers (docs/algorithm.md §1-§5).
//
// Every kernel works on a flat fp32 buffer cut by a Partition. Element-wise math is pinned to the
// docs/algorithm.md's order of fp32 operations (no contraction into FMA), so every instruction set gives the same
// bits. Sums are accumulated in double in a pinned order (16 lanes by element index, then lane by
// lane, then piece by piece), so they too are bitwise the same for every thread count and ISA: ranks
// on different machines stay identical.
#pragma once
#include <bit>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "onebit/thread_pool.hpp"

namespace onebit {

// What the warmup exchange puts on the wire (docs/algorithm.md §11; the exchange itself is
// onebit/half_allreduce.hpp). Here, with the conversions below, because the device twin of the
// exchange's passes (kernels/cuda) sits below comm/ and must round with these very functions.
enum class WirePrecision { kFp32, kBf16, kFp16 };

// The pinned conversions: round to nearest, ties to even, in integer arithmetic (independent of
// the FPU's rounding mode). A NaN stays a (quiet) NaN, and a value past the format's range becomes
// an infinity of its sign: for fp16, anything of magnitude 65520 or more. constexpr so that the
// CUDA kernels call these same functions (nvcc's --expt-relaxed-constexpr): one home, one rounding.
constexpr uint16_t to_bf16(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((x >> 16) | 0x0040u);
  return static_cast<uint16_t>((x + 0x7FFFu + ((x >> 16) & 1u)) >> 16);
}

constexpr float from_bf16(uint16_t h) { return std::bit_cast<float>(static_cast<uint32_t>(h) << 16); }

constexpr uint16_t to_fp16(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  const auto sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t a = x & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return sign | 0x7E00u;     // NaN
  if (a >= 0x477FF000u) return sign | 0x7C00u;    // >= 65520 (and infinity): infinity
  if (a >= 0x38800000u) {                         // >= 2^-14: a normal fp16
    const uint32_t r = a + 0x0FFFu + ((a >> 13) & 1u);
    return static_cast<uint16_t>(sign | ((r - 0x38000000u) >> 13));
  }
  // Subnormal fp16: the value in units of 2^-24, rounded. a = mantissa * 2^(exponent - 150).
  const uint32_t e = a >> 23;
  if (e < 102) return sign;  // below 2^-25: rounds to zero (2^-25 itself is a tie to even 0)
  const uint32_t mant = (a & 0x7FFFFFu) | 0x800000u;
  const uint32_t shift = 126 - e;  // 14 .. 24
  const uint32_t q = mant >> shift, rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
  return static_cast<uint16_t>(sign | (q + (rem > half || (rem == half && (q & 1u)))));
}

constexpr float from_fp16(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 0x1Fu, m = h & 0x3FFu;
  if (e == 0x1F) return std::bit_cast<float>(sign | 0x7F800000u | (m << 13));
  if (e == 0) {
    const float v = static_cast<float>(m) * 0x1p-24f;  // exact
    return sign ? -v : v;
  }
  return std::bit_cast<float>(sign | ((e + 112) << 23) | (m << 13));
}

}  // namespace onebit

namespace onebit::kernels {

enum class Isa { kGeneric, kAvx2, kAvx512 };
const char* isa_name(Isa isa);
bool isa_supported(Isa isa);  // by this CPU and this build
Isa best_isa();
Isa active_isa();
void set_active_isa(Isa isa);  // for tests and benchmarks; throws onebit::Error if unsupported

// A run of elements inside one block, one layer, one allreduce chunk and one scale group.
struct Piece {
  size_t begin = 0, end = 0;
  uint32_t layer = 0, chunk = 0;
  uint32_t group = 0;  // index of the compression scale that covers the piece (docs/algorithm.md §12)
};

// How the kernels cut [0, n): fixed blocks of kBlock elements (threads take whole blocks, so a byte
// of sign bits never straddles two threads and the sum order does not depend on the thread count),
// split further at every layer start, every chunk start and every scale group start into pieces.
//
// Scale groups: with group_len = 0 a chunk has one scale, so group == chunk (docs/algorithm.md §2). Otherwise each
// chunk is cut into groups of group_len elements from its start (the last one shorter), numbered
// chunk * groups_per_chunk() + the group's place in the chunk.
class Partition {
 public:
  static constexpr size_t kBlock = size_t{1} << 15;

  Partition() = default;
  // layer_bounds: offsets of each layer then n (FlatLayout::boundaries()); empty means one layer.
  // chunk_len: length of an allreduce chunk (0 means one chunk). group_len: see above.
  Partition(size_t n, std::span<const size_t> layer_bounds = {}, size_t chunk_len = 0, size_t group_len = 0);

  size_t size() const { return n_; }
  size_t groups_per_chunk() const { return groups_per_chunk_; }
  size_t num_layers() const { return layer_start_.size(); }
  size_t num_blocks() const { return block_first_.empty() ? 0 : block_first_.size() - 1; }
  const std::vector<Piece>& pieces() const { return pieces_; }
  std::span<const Piece> block(size_t b) const {
    return {pieces_.data() + block_first_[b], block_first_[b + 1] - block_first_[b]};
  }
  size_t layer_start(size_t layer) const { return layer_start_[layer]; }

 private:
  size_t n_ = 0, groups_per_chunk_ = 1;
  std::vector<Piece> pieces_;
  std::vector<size_t> block_first_;  // index of each block's first piece, then pieces_.size()
  std::vector<size_t> layer_start_;
};

// --- compression (docs/algorithm.md §1, §2) ---------------------------------------------------------------
// Error state is kept as the compensated value c of the previous call and its scales: the error
// e = c - s*sign(c) is derived when needed, never stored. That saves a whole pass over the buffer.
//
// Scales: a span of one scale covers the whole buffer (the worker's one scale of docs/algorithm.md §2); a longer
// span holds one scale per scale group of the partition, indexed by Piece::group.
//
// The compressions below return the sum of squares of their output over the whole buffer, and when
// piece_sums is given (part.pieces().size() entries) also each piece's: sum_groups turns those into
// one sum per scale group, in the same pinned order.

// Worker compression in one pass: c = x + e(prev, prev_scales); next <- c; bits <- sign(c).
// `next` may equal `prev`. Bits of elements >= n are left untouched.
double compress(const Partition& part, ThreadPool& pool, const float* x, const float* prev,
                std::span<const float> prev_scales, float* next, uint8_t* bits, double* piece_sums = nullptr);

// The momentum as a kernel reads it: a plain fp32 buffer (`values`), or, in the compression stage
// of 1-bit LAMB and 1-bit Adam, the sign bits and scales of the last compressed allreduce, which are
// that momentum exactly (§4 step 5):
//   m[i] = (scales[group of i] * sign(bit i)) / k[layer]   (* masks[layer][i - layer start])
// Reading its 1/8 byte instead of 4 bytes, and never writing it back, is what brings the 1-bit
// LAMB compression step from 64.5 to 48.9 bytes per parameter.
struct Momentum {
  const float* values = nullptr;  // when set, m is this buffer and the fields below are unused
  const uint8_t* bits = nullptr;
  const float* scales = nullptr;        // one per scale group (with one group per chunk: per chunk)
  const float* k = nullptr;             // null: k = 1 (1-bit Adam)
  const float* const* masks = nullptr;  // null, or per layer: null or that layer's 0/1 mask
};
// A kernel reading a Momentum with bits must be given the allreduce's Partition (cut at its groups).

// out[i] = m[i], written out (for checkpoints, and wherever a plain buffer is wanted).
void decode_momentum(const Partition& part, ThreadPool& pool, const Momentum& m, float* out);

// Worker compression with x = (beta1*m + (1-beta1)*g) * k[layer] computed on the fly (1-bit LAMB
// §4 step 3; k == nullptr means k = 1, as in 1-bit Adam §5).
double compress_momentum(const Partition& part, ThreadPool& pool, const Momentum& m, const float* g,
                         float beta1, const float* k, const float* prev, std::span<const float> prev_scales,
                         float* next, uint8_t* bits, double* piece_sums = nullptr);

// Server stage over one chunk (§2 step 3): y = (sum over p of +-s_p) / P + e(f, f_scales);
// f <- y (in place); out_bits <- sign(y). worker_bits holds `world` chunks of stride bytes each;
// worker_scales holds, per scale group of the partition (one when it has none), the world's scales
// for that group. Returns sum of y^2 (and each piece's, as compress does).
double server_average(const Partition& part, ThreadPool& pool, const uint8_t* worker_bits, size_t stride,
                      std::span<const float> worker_scales, int world, float* f, std::span<const float> f_scales,
                      uint8_t* out_bits, double* piece_sums = nullptr);

// out[i] = scales[group of i] * sign(bit i)   (§2 step 5).
void decode(const Partition& part, ThreadPool& pool, const uint8_t* bits, const float* scales, float* out);

// --- stages of a pipelined compressed allreduce ---------------------------------------------
// compress over a subset of the partition's blocks, so that a caller can overlap it with
// communication. Across its stages a call must cover every block exactly once, in any order.
// piece_sums receives the sum of each piece compressed; sum_pieces adds them in the pinned order
// once every block is done: the same bits as one whole compress().
void compress_blocks(const Partition& part, ThreadPool& pool, std::span<const uint32_t> blocks,
                     const float* x, const float* prev, std::span<const float> prev_scales, float* next,
                     uint8_t* bits, double* piece_sums);
double sum_pieces(std::span<const double> piece_sums);
// out[g] = the sum of the piece sums of scale group g, added in piece order (out is zeroed first).
void sum_groups(const Partition& part, std::span<const double> piece_sums, std::span<double> out);

// The error the compressed state stands for: out[i] = c[i] - s*sign(c[i]), s the scale of i's group.
void materialize_error(const Partition& part, std::span<const float> c, std::span<const float> scales,
                       std::span<float> out);

// scale(x) of §1 from a sum of squares: sqrt(sum_sq / n) rounded to fp32 (0 when n == 0).
float scale_from_sum(double sum_sq, size_t n);

// --- optimizers (docs/algorithm.md §3-§5) -----------------------------------------------------------------
struct MomentParams {
  float beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f, weight_decay = 0.0f;
};

// LAMB pass 1, which writes nothing: per layer, sum of w^2 and of u^2 where
// m' = b1*m + (1-b1)*g, v' = b2*v + (1-b2)*g*g, u = m'/(sqrt(v')+eps) + wd*w.
void lamb_norms(const Partition& part, ThreadPool& pool, const float* g, const float* m,
                const float* v, const float* w, const MomentParams& p, double* w_sq,
                double* u_sq);

// LAMB pass 2: m <- m', v <- v', w <- w - coef[layer] * u   (the same m', v', u as pass 1).
void lamb_update(const Partition& part, ThreadPool& pool, const float* g, float* m, float* v,
                 float* w, const MomentParams& p, const float* coef);

// Per-layer results of the 1-bit LAMB compression-stage pass.
struct OnebitLambSums {
  double* w_sq;      // ||w||^2
  double* u_sq;      // ||u||^2,  u = u0 + wd*w
  double* u0_sq;     // ||u0||^2, u0 = m/(sqrt(v)+eps)
  float* max_ratio;  // max of (sqrt(v)+eps) / (sqrt(v_fresh)+eps)
};

// The compression stage's frozen denominator d = sqrt(v) + eps (§4 step 7, §5): v is frozen, so d
// is computed once, not twice per step. Two square roots of a handful of long operations per
// element are what bound the compression step's passes on the CPU.
void frozen_denominator(ThreadPool& pool, std::span<const float> v, float eps, std::span<float> d);

// 1-bit LAMB §4 steps 6-7 and the reductions of step 8, one pass, with m the synchronized momentum,
// m_prev the one of the step before and d the frozen denominator: g~ = (m - b1*m_prev)/(1-b1);
// v_fresh <- b2*v_fresh + (1-b2)*g~^2.
void onebit_lamb_norms(const Partition& part, ThreadPool& pool, const Momentum& m, const Momentum& m_prev,
                       const MomentParams& p, const float* d, float* v_fresh, const float* w,
                       const OnebitLambSums& out);

// Update with the frozen denominator d: w <- w - coef[layer] * (m/d + wd*w).
void frozen_update(const Partition& part, ThreadPool& pool, const Momentum& m, const float* d, float* w,
                   float weight_decay, const float* coef);

// x[i] <- x[i] / d (the warmup average of an allreduced sum).
void divide(ThreadPool& pool, std::span<float> x, float d);

}  // namespace onebit::kernels

namespace onebit::kernels {
// Per-layer sum of x^2 (pinned order), e.g. ||m_l||^2 for 1-bit LAMB's momentum scales.
void layer_sq_norms(const Partition& part, ThreadPool& pool, const float* x, double* out);
}  // namespace onebit::kernels
