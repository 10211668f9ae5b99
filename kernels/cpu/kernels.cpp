// The public CPU kernels: cut the buffer into pieces, run blocks on threads, pick the ISA's piece
// kernels, and combine per-piece sums in a fixed order.
#include "onebit/kernels.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>

#include "onebit/error.hpp"
#include "piece_kernels.hpp"

namespace onebit::kernels {
namespace {

const PieceKernels* table_for(Isa isa) {
  switch (isa) {
#if defined(__x86_64__)
    case Isa::kAvx512: return &kAvx512Kernels;
    case Isa::kAvx2: return &kAvx2Kernels;
#endif
    default: return &kGenericKernels;
  }
}

std::atomic<Isa>& active() {
  static std::atomic<Isa> isa{best_isa()};
  return isa;
}

// Outputs larger than this are written with non-temporal stores (bigger than any L2 and most L3
// slices: they will not be read back from the cache anyway).
constexpr size_t kStreamBytes = size_t{32} << 20;

const PieceKernels& K() { return *table_for(active().load(std::memory_order_relaxed)); }

// Runs fn(piece index, piece) over the pieces of blocks block_at(0 .. count-1), whole blocks per
// thread.
template <class BlockAt, class Fn>
void for_blocks(const Partition& part, ThreadPool& pool, size_t count, BlockAt block_at, Fn fn) {
  const auto& pieces = part.pieces();
  pool.for_range(count, [&](size_t i0, size_t i1) {
    for (size_t i = i0; i < i1; ++i)
      for (const Piece& p : part.block(block_at(i))) fn(static_cast<size_t>(&p - pieces.data()), p);
  });
}

// Runs fn(piece index, piece) over all pieces, whole blocks per thread.
template <class Fn>
void for_pieces(const Partition& part, ThreadPool& pool, Fn fn) {
  for_blocks(part, pool, part.num_blocks(), [](size_t b) { return b; }, fn);
}

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "generic";
  }
}

bool isa_supported(Isa isa) {
#if defined(__x86_64__)
  __builtin_cpu_init();
  switch (isa) {
    case Isa::kAvx512: return __builtin_cpu_supports("avx512f");
    case Isa::kAvx2: return __builtin_cpu_supports("avx2");
    default: return true;
  }
#else
  return isa == Isa::kGeneric;
#endif
}

Isa best_isa() {
  for (Isa isa : {Isa::kAvx512, Isa::kAvx2})
    if (isa_supported(isa)) return isa;
  return Isa::kGeneric;
}

Isa active_isa() { return active().load(); }

void set_active_isa(Isa isa) {
  ONEBIT_CHECK(isa_supported(isa), "kernels: this CPU does not support " << isa_name(isa));
  active().store(isa);
}

Partition::Partition(size_t n, std::span<const size_t> layer_bounds, size_t chunk_len, size_t group_len) : n_(n) {
  std::vector<size_t> cuts;  // every boundary inside (0, n)
  if (layer_bounds.empty()) {
    layer_start_ = {0};
  } else {
    ONEBIT_CHECK(layer_bounds.back() == n, "partition: layer bounds end at " << layer_bounds.back()
                                                                             << ", buffer has " << n);
    layer_start_.assign(layer_bounds.begin(), layer_bounds.end() - 1);
    cuts.insert(cuts.end(), layer_bounds.begin(), layer_bounds.end());
  }
  for (size_t b = kBlock; b < n; b += kBlock) cuts.push_back(b);
  const size_t chunk = chunk_len ? chunk_len : std::max<size_t>(n, 1);
  for (size_t c = 0; c < n; c += chunk) {
    cuts.push_back(c);
    if (group_len > 0)
      for (size_t g = c + group_len; g < std::min(n, c + chunk); g += group_len) cuts.push_back(g);
  }
  if (group_len > 0) groups_per_chunk_ = (chunk + group_len - 1) / group_len;
  cuts.push_back(0);
  cuts.push_back(n);
  std::sort(cuts.begin(), cuts.end());
  cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());

  size_t layer = 0;
  for (size_t i = 0; i + 1 < cuts.size(); ++i) {
    const size_t b = cuts[i], e = cuts[i + 1], c = b / chunk;
    while (layer + 1 < layer_start_.size() && layer_start_[layer + 1] <= b) ++layer;
    if (b / kBlock >= block_first_.size()) block_first_.push_back(pieces_.size());
    const size_t group = c * groups_per_chunk_ + (group_len ? (b - c * chunk) / group_len : 0);
    pieces_.push_back({b, e, static_cast<uint32_t>(layer), static_cast<uint32_t>(c), static_cast<uint32_t>(group)});
  }
  block_first_.push_back(pieces_.size());
}

float scale_from_sum(double sum_sq, size_t n) {
  return n == 0 ? 0.0f : static_cast<float>(std::sqrt(sum_sq / static_cast<double>(n)));
}

namespace {
// A span of one scale covers every piece; a longer one has a scale per scale group.
float scale_of(std::span<const float> scales, const Piece& p) { return scales[scales.size() == 1 ? 0 : p.group]; }
}  // namespace

void materialize_error(const Partition& part, std::span<const float> c, std::span<const float> scales,
                       std::span<float> out) {
  ONEBIT_CHECK(out.size() == c.size() && c.size() == part.size(), "materialize_error: sizes differ");
  for (const Piece& p : part.pieces()) {
    const float s = scale_of(scales, p);
    for (size_t i = p.begin; i < p.end; ++i) out[i] = c[i] - (c[i] >= 0.0f ? s : -s);
  }
}

double sum_pieces(std::span<const double> piece_sums) {
  double total = 0;
  for (double s : piece_sums) total += s;
  return total;
}

void sum_groups(const Partition& part, std::span<const double> piece_sums, std::span<double> out) {
  std::fill(out.begin(), out.end(), 0.0);
  for (size_t i = 0; i < piece_sums.size(); ++i) out[part.pieces()[i].group] += piece_sums[i];
}

namespace {
// The momentum over piece p (Momentum -> MomentumPiece): sk = group scale / k, exact as §4 step 5
// asks, since (s * sign) / k = sign * (s / k) in IEEE arithmetic.
MomentumPiece momentum_piece(const Partition& part, const Momentum& m, const Piece& p) {
  if (m.values) return {.values = m.values, .bits = nullptr, .sk = 0.0f, .mask = nullptr, .mask_base = 0};
  const float k = m.k ? m.k[p.layer] : 1.0f;
  const float* mask = m.masks ? m.masks[p.layer] : nullptr;
  return {.values = nullptr, .bits = m.bits, .sk = m.scales[p.group] / k, .mask = mask,
          .mask_base = part.layer_start(p.layer)};
}

template <class BlockAt>
void compress_into(const Partition& part, ThreadPool& pool, CompressArgs a, std::span<const float> prev_scales,
                   const Momentum* m, const float* k, size_t count, BlockAt block_at, double* sums) {
  a.stream = part.size() * sizeof(float) > kStreamBytes;
  for_blocks(part, pool, count, block_at, [&](size_t idx, const Piece& p) {
    CompressArgs pa = a;
    pa.prev_scale = scale_of(prev_scales, p);
    if (k) pa.k = k[p.layer];
    if (m) pa.m = momentum_piece(part, *m, p);
    sums[idx] = K().compress(p.begin, p.end, pa);
  });
}

double compress_with(const Partition& part, ThreadPool& pool, const CompressArgs& a,
                     std::span<const float> prev_scales, const Momentum* m, const float* k, double* piece_sums) {
  std::vector<double> own;
  if (!piece_sums) {
    own.resize(part.pieces().size());
    piece_sums = own.data();
  }
  compress_into(part, pool, a, prev_scales, m, k, part.num_blocks(), [](size_t b) { return b; }, piece_sums);
  return sum_pieces({piece_sums, part.pieces().size()});
}

CompressArgs plain_input(const float* x, const float* prev, float* next, uint8_t* bits) {
  return {.x = x, .m = {}, .g = nullptr, .beta1 = 1, .one_minus_beta1 = 0, .k = 1, .prev = prev, .prev_scale = 0,
          .next = next, .bits = bits, .stream = false};
}
}  // namespace

void compress_blocks(const Partition& part, ThreadPool& pool, std::span<const uint32_t> blocks,
                     const float* x, const float* prev, std::span<const float> prev_scales, float* next,
                     uint8_t* bits, double* piece_sums) {
  compress_into(part, pool, plain_input(x, prev, next, bits), prev_scales, nullptr, nullptr, blocks.size(),
                [&](size_t i) { return blocks[i]; }, piece_sums);
}

double compress(const Partition& part, ThreadPool& pool, const float* x, const float* prev,
                std::span<const float> prev_scales, float* next, uint8_t* bits, double* piece_sums) {
  return compress_with(part, pool, plain_input(x, prev, next, bits), prev_scales, nullptr, nullptr, piece_sums);
}

double compress_momentum(const Partition& part, ThreadPool& pool, const Momentum& m, const float* g,
                         float beta1, const float* k, const float* prev, std::span<const float> prev_scales,
                         float* next, uint8_t* bits, double* piece_sums) {
  CompressArgs a = plain_input(nullptr, prev, next, bits);
  a.g = g, a.beta1 = beta1, a.one_minus_beta1 = 1.0f - beta1;
  return compress_with(part, pool, a, prev_scales, &m, k, piece_sums);
}

void decode_momentum(const Partition& part, ThreadPool& pool, const Momentum& m, float* out) {
  for_pieces(part, pool, [&](size_t, const Piece& p) {
    const MomentumPiece mp = momentum_piece(part, m, p);
    if (mp.values) {
      std::copy(mp.values + p.begin, mp.values + p.end, out + p.begin);
      return;
    }
    K().decode(p.begin, p.end, {.bits = mp.bits, .scale = mp.sk, .out = out, .stream = false});
    if (mp.mask)
      for (size_t i = p.begin; i < p.end; ++i) out[i] = out[i] * mp.mask[i - mp.mask_base];
  });
}

double server_average(const Partition& part, ThreadPool& pool, const uint8_t* worker_bits, size_t stride,
                      std::span<const float> worker_scales, int world, float* f, std::span<const float> f_scales,
                      uint8_t* out_bits, double* piece_sums) {
  const ServerArgs a{.worker_bits = worker_bits, .stride = stride, .scales = worker_scales.data(), .world = world,
                     .f = f, .f_scale = 0, .out_bits = out_bits};
  const bool per_group = worker_scales.size() > static_cast<size_t>(world);
  std::vector<double> own;
  if (!piece_sums) {
    own.resize(part.pieces().size());
    piece_sums = own.data();
  }
  for_pieces(part, pool, [&](size_t idx, const Piece& p) {
    ServerArgs pa = a;
    if (per_group) pa.scales += static_cast<size_t>(p.group) * static_cast<size_t>(world);
    pa.f_scale = scale_of(f_scales, p);
    piece_sums[idx] = K().server(p.begin, p.end, pa);
  });
  return sum_pieces({piece_sums, part.pieces().size()});
}

void decode(const Partition& part, ThreadPool& pool, const uint8_t* bits, const float* scales, float* out) {
  const bool stream = part.size() * sizeof(float) > kStreamBytes;
  for_pieces(part, pool, [&](size_t, const Piece& p) {
    K().decode(p.begin, p.end, {.bits = bits, .scale = scales[p.group], .out = out, .stream = stream});
  });
}

namespace {
// The moment coefficients every step pass takes, from the optimizer's settings.
template <class Args>
Args with_moments(Args a, const MomentParams& p) {
  a.beta1 = p.beta1, a.one_minus_beta1 = 1.0f - p.beta1;
  a.beta2 = p.beta2, a.one_minus_beta2 = 1.0f - p.beta2;
  a.eps = p.eps, a.weight_decay = p.weight_decay;
  return a;
}

LambArgs lamb_args(const float* g, float* m, float* v, float* w, const MomentParams& p) {
  return with_moments(LambArgs{.g = g, .m = m, .v = v, .w = w, .coef = 0}, p);
}
}  // namespace

void lamb_norms(const Partition& part, ThreadPool& pool, const float* g, const float* m,
                const float* v, const float* w, const MomentParams& p, double* w_sq,
                double* u_sq) {
  // The pass only reads; LambArgs is shared with the update, hence the casts.
  const LambArgs a = lamb_args(g, const_cast<float*>(m), const_cast<float*>(v), const_cast<float*>(w), p);
  std::vector<LambSums> sums(part.pieces().size());
  for_pieces(part, pool,
             [&](size_t idx, const Piece& pc) { sums[idx] = K().lamb_norms(pc.begin, pc.end, a); });
  std::fill(w_sq, w_sq + part.num_layers(), 0.0);
  std::fill(u_sq, u_sq + part.num_layers(), 0.0);
  for (size_t i = 0; i < sums.size(); ++i) {
    const uint32_t l = part.pieces()[i].layer;
    w_sq[l] += sums[i].w_sq;
    u_sq[l] += sums[i].u_sq;
  }
}

void lamb_update(const Partition& part, ThreadPool& pool, const float* g, float* m, float* v,
                 float* w, const MomentParams& p, const float* coef) {
  const LambArgs a = lamb_args(g, m, v, w, p);
  for_pieces(part, pool, [&](size_t, const Piece& pc) {
    LambArgs pa = a;
    pa.coef = coef[pc.layer];
    K().lamb_update(pc.begin, pc.end, pa);
  });
}

void frozen_denominator(ThreadPool& pool, std::span<const float> v, float eps, std::span<float> d) {
  ONEBIT_CHECK(d.size() == v.size(), "frozen_denominator: sizes differ");
  pool.for_range(v.size(), [&](size_t b, size_t e) {
    for (size_t i = b; i < e; ++i) d[i] = std::sqrt(v[i]) + eps;
  });
}

void onebit_lamb_norms(const Partition& part, ThreadPool& pool, const Momentum& m, const Momentum& m_prev,
                       const MomentParams& p, const float* d, float* v_fresh, const float* w,
                       const OnebitLambSums& out) {
  std::vector<OnebitSums> sums(part.pieces().size());
  for_pieces(part, pool, [&](size_t idx, const Piece& pc) {
    const OnebitArgs a = with_moments(OnebitArgs{.m = momentum_piece(part, m, pc),
                                                 .m_prev = momentum_piece(part, m_prev, pc),
                                                 .d = d,
                                                 .v_fresh = v_fresh,
                                                 .w = w},
                                      p);
    sums[idx] = K().onebit_norms(pc.begin, pc.end, a);
  });
  const size_t L = part.num_layers();
  std::fill(out.w_sq, out.w_sq + L, 0.0);
  std::fill(out.u_sq, out.u_sq + L, 0.0);
  std::fill(out.u0_sq, out.u0_sq + L, 0.0);
  std::fill(out.max_ratio, out.max_ratio + L, 0.0f);
  for (size_t i = 0; i < sums.size(); ++i) {
    const uint32_t l = part.pieces()[i].layer;
    out.w_sq[l] += sums[i].w_sq;
    out.u_sq[l] += sums[i].u_sq;
    out.u0_sq[l] += sums[i].u0_sq;
    out.max_ratio[l] = std::max(out.max_ratio[l], sums[i].max_ratio);
  }
}

void frozen_update(const Partition& part, ThreadPool& pool, const Momentum& m, const float* d, float* w,
                   float weight_decay, const float* coef) {
  for_pieces(part, pool, [&](size_t, const Piece& pc) {
    K().frozen_update(pc.begin, pc.end,
                      {.m = momentum_piece(part, m, pc), .d = d, .w = w, .weight_decay = weight_decay,
                       .coef = coef[pc.layer]});
  });
}

void divide(ThreadPool& pool, std::span<float> x, float d) {
  pool.for_range(x.size(), [&](size_t b, size_t e) {
    for (size_t i = b; i < e; ++i) x[i] = x[i] / d;
  });
}

}  // namespace onebit::kernels

namespace onebit::kernels {

void layer_sq_norms(const Partition& part, ThreadPool& pool, const float* x, double* out) {
  // Runs once per training run (1-bit LAMB's k), so a plain loop in the pinned lane order serves.
  std::vector<LambSums> sums(part.pieces().size());
  for_pieces(part, pool, [&](size_t idx, const Piece& p) {
    double l[16] = {};
    for (size_t i = p.begin; i < p.end; ++i) l[i & 15] += static_cast<double>(x[i]) * x[i];
    double s = 0;
    for (double v : l) s += v;
    sums[idx].w_sq = s;
  });
  std::fill(out, out + part.num_layers(), 0.0);
  for (size_t i = 0; i < sums.size(); ++i) out[part.pieces()[i].layer] += sums[i].w_sq;
}

}  // namespace onebit::kernels
