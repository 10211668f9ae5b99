// CUDA compression kernels of docs/algorithm.md §1-§2 (worker compress, server average, decode): the formulas of
// kernels/cpu/piece_impl.hpp, operation for operation, with sign bits packed by warp votes.
#include "launch.cuh"

namespace onebit::cuda {
namespace detail {
namespace {

// c = x + (prev - s*sign(prev)); next <- c; bit <- c >= 0; sums c^2. x is the input, or the scaled
// local momentum (beta1*m + (1-beta1)*g) * k[layer].
template <bool kMomentum>
struct CompressOp {
  static constexpr int kSlots = 1, kMaxSlot = -1;
  static constexpr bool kBits = true, kPieces = kMomentum;
  const float* x;
  const float* m;
  const float* g;
  float beta1, one_minus_beta1;
  const float* k_layer;
  float k;
  const float* prev;
  const float* prev_scale;
  float s;
  float* next;
  uint8_t* bits;

  struct In {
    float a, b, prev;
  };
  __device__ void begin() { s = *prev_scale; }
  __device__ void enter(const Piece& p, const PartView&) { k = k_layer ? k_layer[p.layer] : 1.0f; }
  __device__ In load(size_t i) const {
    if constexpr (kMomentum) return {m[i], g[i], prev[i]};
    return {x[i], 0.0f, prev[i]};
  }
  __device__ bool compute(size_t i, const In& in, float (&v)[1]) const {
    const float err = in.prev - pm(in.prev >= 0.0f, s);
    const float xv = kMomentum ? (beta1 * in.a + one_minus_beta1 * in.b) * k : in.a;
    const float c = xv + err;
    next[i] = c;
    v[0] = c;
    return c >= 0.0f;
  }
};

// y = (sum over p of +-s_p) / P + (f - fs*sign(f)); f <- y; bit <- y >= 0; sums y^2.
struct ServerOp {
  static constexpr int kSlots = 1, kMaxSlot = -1;
  static constexpr bool kBits = true, kPieces = false;
  const uint8_t* worker_bits;
  size_t stride;
  const float* scales;
  int world;
  float* f;
  const float* f_scale;
  float fs;
  uint8_t* bits;

  struct In {
    float f, sum;
  };
  __device__ void begin() { fs = *f_scale; }
  // The workers' bits are read here, with the other loads, so that rows overlap their latency.
  __device__ In load(size_t i) const {
    float sum = 0.0f;
    for (int p = 0; p < world; ++p) sum += pm(get_bit(worker_bits + p * stride, i), scales[p]);
    return {f[i], sum};
  }
  __device__ bool compute(size_t i, const In& in, float (&v)[1]) const {
    const float y = in.sum / static_cast<float>(world) + (in.f - pm(in.f >= 0.0f, fs));
    f[i] = y;
    v[0] = y;
    return y >= 0.0f;
  }
};

struct DecodeOp {
  static constexpr bool kPieces = true;
  const uint8_t* bits;
  const float* scales;
  float s;
  float* out;

  struct In {
    bool bit;
  };
  __device__ void begin() {}
  __device__ void enter(const Piece& p, const PartView&) { s = scales[p.chunk]; }
  __device__ In load(size_t i) const { return {get_bit(bits, i)}; }
  __device__ void compute(size_t i, const In& in) const { out[i] = pm(in.bit, s); }
};

// decode into m, then w <- w - coef*(m/(sqrt(v)+eps) + wd*w): decode and frozen_update fused.
struct DecodeFrozenOp {
  static constexpr bool kPieces = true;
  const uint8_t* bits;
  const float* scales;
  float s;
  float* m;
  const float* v;
  float* w;
  float eps, weight_decay;
  const float* coef_layer;
  float coef;

  struct In {
    bool bit;
    float v, w;
  };
  __device__ void begin() {}
  __device__ void enter(const Piece& p, const PartView&) {
    s = scales[p.chunk];
    coef = coef_layer[p.layer];
  }
  __device__ In load(size_t i) const { return {get_bit(bits, i), v[i], w[i]}; }
  __device__ void compute(size_t i, const In& in) const {
    const float mv = pm(in.bit, s);
    m[i] = mv;
    const float u = mv / (sqrtf(in.v) + eps) + weight_decay * in.w;
    w[i] = in.w - coef * u;
  }
};

__global__ void flag_nonfinite_kernel(const float* x, int n, int* skip) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  for (int i = 0; i < n; ++i)
    if (!isfinite(x[i])) *skip = 1;
}

void reduce_total(const DevicePartition& part, SumOut out, Stream stream, const int* skip,
                  const char* what) {
  SegOut<1> seg{{out.sum_sq}, nullptr, out.scale, part.size()};
  launch_reduce<1, -1>(part, false, seg, stream, skip, what);
}

}  // namespace
}  // namespace detail

using namespace detail;

void compress(const DevicePartition& part, const float* x, const float* prev, const float* prev_scale,
              float* next, uint8_t* bits, SumOut out, Stream stream, const int* skip) {
  check_word_aligned(bits, "compress");
  const CompressOp<false> op{x, nullptr, nullptr, 1.0f, 0.0f, nullptr, 1.0f, prev, prev_scale,
                             0.0f, next, bits};
  launch_tile(part, op, stream, skip, "compress");
  reduce_total(part, out, stream, skip, "compress (sum)");
}

void compress_momentum(const DevicePartition& part, const float* m, const float* g, float beta1,
                       const float* k, const float* prev, const float* prev_scale, float* next,
                       uint8_t* bits, SumOut out, Stream stream, const int* skip) {
  check_word_aligned(bits, "compress_momentum");
  const CompressOp<true> op{nullptr, m, g, beta1, 1.0f - beta1, k, 1.0f, prev, prev_scale, 0.0f,
                            next, bits};
  launch_tile(part, op, stream, skip, "compress_momentum");
  reduce_total(part, out, stream, skip, "compress_momentum (sum)");
}

void server_average(const DevicePartition& part, const uint8_t* worker_bits, size_t stride,
                    const float* worker_scales, int world, float* f, const float* f_scale,
                    uint8_t* out_bits, SumOut out, Stream stream, int* set_skip) {
  check_word_aligned(out_bits, "server_average");
  ONEBIT_CHECK(world >= 1, "cuda server_average: world size " << world);
  int* skip = set_skip ? set_skip : PartitionArrays::flag(part);
  if (!set_skip) CUDA_CHECK(cudaMemsetAsync(skip, 0, sizeof(int), stream));
  flag_nonfinite_kernel<<<1, 32, 0, stream>>>(worker_scales, world, skip);
  CUDA_CHECK_LAUNCH("server_average (scale check)");
  const ServerOp op{worker_bits, stride, worker_scales, world, f, f_scale, 0.0f, out_bits};
  launch_tile(part, op, stream, skip, "server_average");
  reduce_total(part, out, stream, skip, "server_average (sum)");
}

void decode(const DevicePartition& part, const uint8_t* bits, const float* chunk_scales, float* out,
            Stream stream, const int* skip) {
  launch_elementwise(part, DecodeOp{bits, chunk_scales, 0.0f, out}, stream, skip, "decode");
}

void decode_frozen_update(const DevicePartition& part, const uint8_t* bits, const float* chunk_scales,
                          float* m, const float* v, float* w, float eps, float weight_decay,
                          const float* coef, Stream stream, const int* skip) {
  const DecodeFrozenOp op{bits, chunk_scales, 0.0f, m, v, w, eps, weight_decay, coef, 0.0f};
  launch_elementwise(part, op, stream, skip, "decode_frozen_update");
}

}  // namespace onebit::cuda
