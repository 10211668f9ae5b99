// CUDA optimizer passes of docs/algorithm.md §3-§5 (LAMB norms and update, the 1-bit LAMB compression-stage pass,
// the frozen-variance update) and small helpers: the formulas of kernels/cpu/piece_impl.hpp.
#include "launch.cuh"

namespace onebit::cuda {
namespace detail {
namespace {

// m' = b1*m + (1-b1)*g;  v' = b2*v + (1-b2)*(g*g);  u = m'/(sqrt(v')+eps) + wd*w
struct LambMoments {
  float beta1, one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay;
  struct Out {
    float m, v, u;
  };
  __device__ Out operator()(float g, float m, float v, float w) const {
    const float mn = beta1 * m + one_minus_beta1 * g;
    const float vn = beta2 * v + one_minus_beta2 * (g * g);
    return {mn, vn, mn / (sqrtf(vn) + eps) + weight_decay * w};
  }
};

LambMoments moments(const kernels::MomentParams& p) {
  return {p.beta1, 1.0f - p.beta1, p.beta2, 1.0f - p.beta2, p.eps, p.weight_decay};
}

struct Gmvw {
  float g, m, v, w;
};

struct LambNormsOp {  // sums w^2 and u^2, writes nothing
  static constexpr int kSlots = 2, kMaxSlot = -1;
  static constexpr bool kBits = false, kPieces = false;
  const float *g, *m, *v, *w;
  LambMoments mo;
  uint8_t* bits;  // unused

  using In = Gmvw;
  __device__ void begin() {}
  __device__ In load(size_t i) const { return {g[i], m[i], v[i], w[i]}; }
  __device__ bool compute(size_t, const In& in, float (&out)[2]) const {
    out[0] = in.w;
    out[1] = mo(in.g, in.m, in.v, in.w).u;
    return false;
  }
};

struct LambUpdateOp {  // m <- m', v <- v', w <- w - coef[layer]*u
  static constexpr bool kPieces = true;
  const float* g;
  float *m, *v, *w;
  LambMoments mo;
  const float* coef_layer;
  float coef;

  using In = Gmvw;
  __device__ void begin() {}
  __device__ void enter(const Piece& p, const PartView&) { coef = coef_layer[p.layer]; }
  __device__ In load(size_t i) const { return {g[i], m[i], v[i], w[i]}; }
  __device__ void compute(size_t i, const In& in) const {
    const auto r = mo(in.g, in.m, in.v, in.w);
    m[i] = r.m;
    v[i] = r.v;
    w[i] = in.w - coef * r.u;
  }
};

// 1-bit LAMB §4 steps 6-7 with m the synchronized momentum and m_prev the one before:
// g~ = (m - b1*m_prev)/(1-b1); vf' = b2*vf + (1-b2)*(g~*g~); d = sqrt(v)+eps; u0 = m/d;
// u = u0 + wd*w; ratio = d/(sqrt(vf')+eps). Sums w^2, u^2, u0^2 and the max ratio.
struct OnebitNormsOp {
  static constexpr int kSlots = 4, kMaxSlot = 3;
  static constexpr bool kBits = false, kPieces = true;
  MomentumView m, m_prev;
  float* v_fresh;
  const float *v, *w;
  float beta1, one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay;
  uint8_t* bits;  // unused

  struct In {
    MomentumView::In m, m_prev;
    float v, vf, w;
  };
  __device__ void begin() {}
  __device__ void enter(const Piece& p, const PartView& part) {
    m.enter(p, part);
    m_prev.enter(p, part);
  }
  __device__ In load(size_t i) const { return {m.load(i), m_prev.load(i), v[i], v_fresh[i], w[i]}; }
  __device__ bool compute(size_t i, const In& in, float (&out)[4]) const {
    const float mv = in.m;
    const float gt = (mv - beta1 * in.m_prev) / one_minus_beta1;
    const float vf = beta2 * in.vf + one_minus_beta2 * (gt * gt);
    const float d = sqrtf(in.v) + eps;
    const float u0 = mv / d;
    const float u = u0 + weight_decay * in.w;
    v_fresh[i] = vf;
    out[0] = in.w;
    out[1] = u;
    out[2] = u0;
    out[3] = d / (sqrtf(vf) + eps);
    return false;
  }
};

struct FrozenOp {  // w <- w - coef[layer] * (m/(sqrt(v)+eps) + wd*w)
  static constexpr bool kPieces = true;
  MomentumView m;
  const float* v;
  float* w;
  float eps, weight_decay;
  const float* coef_layer;
  float coef;

  struct In {
    MomentumView::In m;
    float v, w;
  };
  __device__ void begin() {}
  __device__ void enter(const Piece& p, const PartView& part) {
    m.enter(p, part);
    coef = coef_layer[p.layer];
  }
  __device__ In load(size_t i) const { return {m.load(i), v[i], w[i]}; }
  __device__ void compute(size_t i, const In& in) const {
    const float u = in.m / (sqrtf(in.v) + eps) + weight_decay * in.w;
    w[i] = in.w - coef * u;
  }
};

struct FrozenNormsOp {  // sums w^2 and u^2, u = m/(sqrt(v)+eps) + wd*w; writes nothing
  static constexpr int kSlots = 2, kMaxSlot = -1;
  static constexpr bool kBits = false, kPieces = false;
  const float *m, *v, *w;
  float eps, weight_decay;
  uint8_t* bits;  // unused

  struct In {
    float m, v, w;
  };
  __device__ void begin() {}
  __device__ In load(size_t i) const { return {m[i], v[i], w[i]}; }
  __device__ bool compute(size_t, const In& in, float (&out)[2]) const {
    out[0] = in.w;
    out[1] = in.m / (sqrtf(in.v) + eps) + weight_decay * in.w;
    return false;
  }
};

// OnebitLamb::refresh_step's x (launchers.hpp, RefreshArgs).
struct RefreshOp {
  static constexpr bool kPieces = true;
  RefreshArgs a;
  MomentumView m;
  float ws, ss, inv_k, world;
  bool own;  // the piece lies in this rank's chunk
  size_t chunk0;

  struct In {
    MomentumView::In m;
    float g, wc, sc;
  };
  __device__ void begin() {}
  __device__ void enter(const Piece& p, const PartView& part) {
    m.enter(p, part);
    ws = a.worker_scales.scales[a.worker_scales.per_group ? p.group : 0];
    own = p.chunk == static_cast<uint32_t>(a.rank);
    const size_t place = own ? p.group - static_cast<size_t>(a.rank) * a.groups_per_chunk : 0;
    ss = a.server_scales.scales[a.server_scales.per_group ? place : 0];
    inv_k = 1.0f / a.k[p.layer];
  }
  __device__ In load(size_t i) const {
    return {m.load(i), a.g[i], a.worker_c[i], own ? a.server_c[i - chunk0] : 0.0f};
  }
  __device__ void compute(size_t i, const In& in) const {
    float e = in.wc - pm(in.wc >= 0.0f, ws);
    if (own) e += world * (in.sc - pm(in.sc >= 0.0f, ss));
    a.x[i] = a.beta1 * in.m + (1 - a.beta1) * in.g + e * inv_k;
  }
};

struct MaskOp {  // x <- x * mask where the layer has one
  static constexpr bool kPieces = true;
  float* x;
  const float* const* masks;
  const float* mask;
  size_t base;

  struct In {
    float x, mask;
  };
  __device__ void begin() {}
  __device__ void enter(const Piece& p, const PartView& part) {
    mask = masks[p.layer];
    base = part.layer_start[p.layer];
  }
  __device__ In load(size_t i) const { return {x[i], mask ? mask[i - base] : 1.0f}; }
  __device__ void compute(size_t i, const In& in) const {
    if (mask) x[i] = in.x * in.mask;
  }
};

struct SquareOp {  // sums x^2
  static constexpr int kSlots = 1, kMaxSlot = -1;
  static constexpr bool kBits = false, kPieces = false;
  const float* x;
  uint8_t* bits;  // unused

  struct In {
    float x;
  };
  __device__ void begin() {}
  __device__ In load(size_t i) const { return {x[i]}; }
  __device__ bool compute(size_t, const In& in, float (&out)[1]) const {
    out[0] = in.x;
    return false;
  }
};


__global__ void divide_kernel(float* x, size_t n, float d, const int* skip) {
  if (skip && *skip) return;
  for (size_t i = blockIdx.x * size_t{kFlatThreads} + threadIdx.x; i < n; i += size_t{gridDim.x} * kFlatThreads)
    x[i] = x[i] / d;
}

__global__ void copy_kernel(float* dst, const float* src, size_t n, const int* skip) {
  if (skip && *skip) return;
  for (size_t i = blockIdx.x * size_t{kFlatThreads} + threadIdx.x; i < n; i += size_t{gridDim.x} * kFlatThreads)
    dst[i] = src[i];
}

__global__ void fill_kernel(float* x, size_t n, float value, const int* skip) {
  if (skip && *skip) return;
  for (size_t i = blockIdx.x * size_t{kFlatThreads} + threadIdx.x; i < n; i += size_t{gridDim.x} * kFlatThreads)
    x[i] = value;
}

}  // namespace
}  // namespace detail

using namespace detail;

void lamb_norms(const DevicePartition& part, const float* g, const float* m, const float* v,
                const float* w, const kernels::MomentParams& p, double* w_sq, double* u_sq,
                Stream stream, const int* skip) {
  launch_tile(part, LambNormsOp{g, m, v, w, moments(p), nullptr}, stream, skip, "lamb_norms");
  launch_reduce<2, -1>(part, Segments::kLayers, SegOut<2>{{w_sq, u_sq}, nullptr, nullptr, 0, nullptr}, stream,
                       skip, "lamb_norms (sums)");
}

void lamb_update(const DevicePartition& part, const float* g, float* m, float* v, float* w,
                 const kernels::MomentParams& p, const float* coef, Stream stream, const int* skip) {
  launch_elementwise(part, LambUpdateOp{g, m, v, w, moments(p), coef, 0.0f}, stream, skip,
                     "lamb_update");
}

void onebit_lamb_norms(const DevicePartition& part, const kernels::Momentum& m, const kernels::Momentum& m_prev,
                       const kernels::MomentParams& p, const float* v, float* v_fresh, const float* w,
                       const kernels::OnebitLambSums& out, Stream stream, const int* skip) {
  const OnebitNormsOp op{momentum_view(m), momentum_view(m_prev), v_fresh, v, w, p.beta1, 1.0f - p.beta1, p.beta2,
                         1.0f - p.beta2, p.eps, p.weight_decay, nullptr};
  launch_tile(part, op, stream, skip, "onebit_lamb_norms");
  launch_reduce<4, 3>(part, Segments::kLayers,
                      SegOut<4>{{out.w_sq, out.u_sq, out.u0_sq, nullptr}, out.max_ratio, nullptr, 0, nullptr}, stream,
                      skip, "onebit_lamb_norms (sums)");
}

void frozen_update(const DevicePartition& part, const kernels::Momentum& m, const float* v, float* w, float eps,
                   float weight_decay, const float* coef, Stream stream, const int* skip) {
  launch_elementwise(part, FrozenOp{momentum_view(m), v, w, eps, weight_decay, coef, 0.0f}, stream, skip,
                     "frozen_update");
}

void frozen_norms(const DevicePartition& part, const float* m, const float* v, const float* w, float eps,
                  float weight_decay, double* w_sq, double* u_sq, Stream stream, const int* skip) {
  launch_tile(part, FrozenNormsOp{m, v, w, eps, weight_decay, nullptr}, stream, skip, "frozen_norms");
  launch_reduce<2, -1>(part, Segments::kLayers, SegOut<2>{{w_sq, u_sq}, nullptr, nullptr, 0, nullptr}, stream, skip,
                       "frozen_norms (sums)");
}

void refresh_momentum(const DevicePartition& part, const RefreshArgs& a, Stream stream, const int* skip) {
  // Pieces are cut at chunk starts: this rank's chunk begins with its first piece (it has none when
  // the chunk is all padding, and then no element is its own).
  size_t first = part.size();
  for (const auto& p : part.host().pieces())
    if (p.chunk == static_cast<uint32_t>(a.rank)) {
      first = p.begin;
      break;
    }
  RefreshOp op{a, momentum_view(a.m), 0.0f, 0.0f, 0.0f, static_cast<float>(a.world), false, first};
  launch_elementwise(part, op, stream, skip, "refresh_momentum");
}

void apply_masks(const DevicePartition& part, float* x, const float* const* masks, Stream stream, const int* skip) {
  launch_elementwise(part, MaskOp{x, masks, nullptr, 0}, stream, skip, "apply_masks");
}

void layer_sq_norms(const DevicePartition& part, const float* x, double* out, Stream stream,
                    const int* skip) {
  launch_tile(part, SquareOp{x, nullptr}, stream, skip, "layer_sq_norms");
  launch_reduce<1, -1>(part, Segments::kLayers, SegOut<1>{{out}, nullptr, nullptr, 0, nullptr}, stream, skip,
                       "layer_sq_norms (sums)");
}

void divide(float* x, size_t n, float d, Stream stream, const int* skip) {
  if (n == 0) return;
  divide_kernel<<<flat_blocks(n), kFlatThreads, 0, stream>>>(x, n, d, skip);
  CUDA_CHECK_LAUNCH("divide");
}

void copy(float* dst, const float* src, size_t n, Stream stream, const int* skip) {
  if (n == 0) return;
  copy_kernel<<<flat_blocks(n), kFlatThreads, 0, stream>>>(dst, src, n, skip);
  CUDA_CHECK_LAUNCH("copy");
}

void fill(float* x, size_t n, float value, Stream stream, const int* skip) {
  if (n == 0) return;
  fill_kernel<<<flat_blocks(n), kFlatThreads, 0, stream>>>(x, n, value, skip);
  CUDA_CHECK_LAUNCH("fill");
}

}  // namespace onebit::cuda
