// CUDA compression kernels of docs/algorithm.md §1-§2 (worker compress, server average, decode): the formulas of
// kernels/cpu/piece_impl.hpp, operation for operation, with sign bits packed by warp votes.
#include "launch.cuh"

namespace onebit::cuda {
namespace detail {
namespace {

// A ScalesIn at one piece: the buffer's one scale, or its group's.
__device__ __forceinline__ float scale_at(const ScalesIn& s, const Piece& p) {
  return s.scales[s.per_group ? p.group : 0];
}

// c = x + (prev - s*sign(prev)); next <- c; bit <- c >= 0; sums c^2. x is the input, or the scaled
// local momentum (beta1*m + (1-beta1)*g) * k[layer].
template <bool kMomentum>
struct CompressOp {
  static constexpr int kSlots = 1, kMaxSlot = -1;
  static constexpr bool kBits = true, kPieces = true;
  const float* x;
  MomentumView m;
  const float* g;
  float beta1, one_minus_beta1;
  const float* k_layer;
  float k;
  const float* prev;
  ScalesIn prev_scales;
  float s;
  float* next;
  uint8_t* bits;

  struct In {
    MomentumView::In m;
    float a, prev;
  };
  __device__ void begin() {}
  __device__ void enter(const Piece& p, const PartView& part) {
    s = scale_at(prev_scales, p);
    k = k_layer ? k_layer[p.layer] : 1.0f;
    if constexpr (kMomentum) m.enter(p, part);
  }
  __device__ In load(size_t i) const {
    if constexpr (kMomentum) return {m.load(i), g[i], prev[i]};
    return {{}, x[i], prev[i]};
  }
  __device__ bool compute(size_t i, const In& in, float (&v)[1]) const {
    const float err = in.prev - pm(in.prev >= 0.0f, s);
    const float xv = kMomentum ? (beta1 * in.m + one_minus_beta1 * in.a) * k : in.a;
    const float c = xv + err;
    next[i] = c;
    v[0] = c;
    return c >= 0.0f;
  }
};

// y = (sum over p of +-s_p) / P + (f - fs*sign(f)); f <- y; bit <- y >= 0; sums y^2.
struct ServerOp {
  static constexpr int kSlots = 1, kMaxSlot = -1;
  static constexpr bool kBits = true, kPieces = true;
  const uint8_t* worker_bits;
  size_t stride;
  ScalesIn scales_in;
  size_t groups;  // scales per rank
  const float* scales;  // the piece's group's scale of rank 0; rank p's is scales[p * groups]
  int world;
  float* f;
  ScalesIn f_scales;
  float fs;
  uint8_t* bits;

  struct In {
    float f, sum;
  };
  __device__ void begin() {}
  __device__ void enter(const Piece& p, const PartView&) {
    scales = scales_in.scales + (scales_in.per_group ? p.group : 0);
    fs = scale_at(f_scales, p);
  }
  // The workers' bits are read here, with the other loads, so that rows overlap their latency.
  __device__ In load(size_t i) const {
    float sum = 0.0f;
    for (int p = 0; p < world; ++p) sum += pm(get_bit(worker_bits + p * stride, i), scales[p * groups]);
    return {f[i], sum};
  }
  __device__ bool compute(size_t i, const In& in, float (&v)[1]) const {
    const float y = in.sum / static_cast<float>(world) + (in.f - pm(in.f >= 0.0f, fs));
    f[i] = y;
    v[0] = y;
    return y >= 0.0f;
  }
};

// out[i] = m[i] (a momentum in signs: its scale over k, times the mask).
struct DecodeOp {
  static constexpr bool kPieces = true;
  MomentumView m;
  float* out;

  using In = MomentumView::In;
  __device__ void begin() {}
  __device__ void enter(const Piece& p, const PartView& part) { m.enter(p, part); }
  __device__ In load(size_t i) const { return m.load(i); }
  __device__ void compute(size_t i, const In& in) const { out[i] = in; }
};

// c <- (c - s*sign(c)) * (num[layer] / den[layer]).
struct RescaleOp {
  static constexpr bool kPieces = true;
  float* c;
  ScalesIn scales;
  const float *num, *den;
  float s, r;

  struct In {
    float c;
  };
  __device__ void begin() {}
  __device__ void enter(const Piece& p, const PartView&) {
    s = scale_at(scales, p);
    r = num[p.layer] / den[p.layer];
  }
  __device__ In load(size_t i) const { return {c[i]}; }
  __device__ void compute(size_t i, const In& in) const { c[i] = (in.c - pm(in.c >= 0.0f, s)) * r; }
};

}  // namespace
}  // namespace detail

using namespace detail;

void compress(const DevicePartition& part, const float* x, const float* prev, ScalesIn prev_scales,
              float* next, uint8_t* bits, ScalesOut out, Stream stream, const int* skip) {
  check_word_aligned(bits, "compress");
  const CompressOp<false> op{x, {}, nullptr, 1.0f, 0.0f, nullptr, 1.0f, prev, prev_scales, 0.0f, next, bits};
  launch_tile(part, op, stream, skip, "compress");
  launch_scales(part, out, stream, skip, "compress (scales)");
}

void compress_momentum(const DevicePartition& part, const kernels::Momentum& m, const float* g, float beta1,
                       const float* k, const float* prev, ScalesIn prev_scales, float* next, uint8_t* bits,
                       ScalesOut out, Stream stream, const int* skip) {
  check_word_aligned(bits, "compress_momentum");
  const CompressOp<true> op{nullptr, momentum_view(m), g, beta1, 1.0f - beta1, k, 1.0f, prev, prev_scales,
                            0.0f, next, bits};
  launch_tile(part, op, stream, skip, "compress_momentum");
  launch_scales(part, out, stream, skip, "compress_momentum (scales)");
}

void server_average(const DevicePartition& part, const uint8_t* worker_bits, size_t stride,
                    ScalesIn worker_scales, int world, float* f, ScalesIn f_scales, uint8_t* out_bits,
                    ScalesOut out, Stream stream, int* set_skip) {
  check_word_aligned(out_bits, "server_average");
  ONEBIT_CHECK(world >= 1, "cuda server_average: world size " << world);
  int* skip = set_skip ? set_skip : PartitionArrays::flag(part);
  if (!set_skip) CUDA_CHECK(cudaMemsetAsync(skip, 0, sizeof(int), stream));
  const size_t groups = worker_scales.per_group ? part.num_groups() : 1;
  if (!worker_scales.per_group) flag_nonfinite(worker_scales.scales, static_cast<size_t>(world), skip, stream);
  const ServerOp op{worker_bits, stride, worker_scales, groups, nullptr, world, f, f_scales, 0.0f, out_bits};
  launch_tile(part, op, stream, skip, "server_average");
  launch_scales(part, out, stream, skip, "server_average (scales)");
}

void decode(const DevicePartition& part, const uint8_t* bits, const float* scales, float* out,
            Stream stream, const int* skip) {
  decode_momentum(part, kernels::Momentum{.bits = bits, .scales = scales}, out, stream, skip);
}

void decode_momentum(const DevicePartition& part, const kernels::Momentum& m, float* out, Stream stream,
                     const int* skip) {
  launch_elementwise(part, DecodeOp{momentum_view(m), out}, stream, skip, "decode");
}

void rescale_errors(const DevicePartition& part, float* c, ScalesIn scales, const float* ratio_num,
                    const float* ratio_den, Stream stream, const int* skip) {
  launch_elementwise(part, RescaleOp{c, scales, ratio_num, ratio_den, 0.0f, 0.0f}, stream, skip, "rescale_errors");
}

}  // namespace onebit::cuda
