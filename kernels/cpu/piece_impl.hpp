// The kernel bodies, written once over a 16-wide group type G and compiled once per instruction set
// (the includer defines ONEBIT_ISA_NS and includes its simd_*.hpp first). Each kernel handles the
// unaligned head and tail of a piece element by element and the aligned middle 16 at a time, with
// the same fp32 operations in the same order in both paths: docs/algorithm.md's formulas, written out.
#pragma once
#include <cmath>
#include <cstring>

#include "piece_kernels.hpp"

namespace ONEBIT_ISA_NS {

using namespace onebit::kernels;

inline bool get_bit(const uint8_t* bits, size_t i) { return (bits[i >> 3] >> (i & 7)) & 1; }
inline void set_bit(uint8_t* bits, size_t i, bool b) {
  const uint8_t mask = static_cast<uint8_t>(1u << (i & 7));
  bits[i >> 3] = static_cast<uint8_t>((bits[i >> 3] & ~mask) | (b ? mask : 0));
}
inline uint16_t load_bits16(const uint8_t* bits, size_t i) {
  uint16_t r;
  std::memcpy(&r, bits + (i >> 3), 2);
  return r;
}
inline void store_bits16(uint8_t* bits, size_t i, uint16_t b) { std::memcpy(bits + (i >> 3), &b, 2); }
inline float pm(bool bit, float s) { return bit ? s : -s; }  // s * sign
inline G signed_from_bits(uint16_t bits, float s) { return from_bits(bits, s, -s); }
inline double sq(float x) { return static_cast<double>(x) * static_cast<double>(x); }

// Asks for the cache line of p[i + kAhead]. On the machine measured here the hardware prefetchers
// lose pace over several input streams: compression ran ~15% faster with this, the 1-bit LAMB
// step ~7% (LAMB's four-stream passes did not gain, so they do without).
constexpr size_t kAhead = 512;  // floats: 2 KiB, 32 groups of 16 ahead
// (The address may lie past the buffer: a prefetch never faults, and it is formed as an integer.)
inline void ahead(const float* p, size_t i) {
  __builtin_prefetch(reinterpret_cast<const void*>(reinterpret_cast<uintptr_t>(p) + (i + kAhead) * sizeof(float)));
}

// Sum of squares in 16 lanes (lane = index % 16), folded in lane order.
struct Lanes {
  double v[16] = {};
  void add(size_t i, float x) { v[i & 15] += sq(x); }
  double fold() const {
    double s = 0;
    for (double x : v) s += x;
    return s;
  }
};

// The momentum at element i, and at the aligned group of 16 from i (MomentumPiece).
inline float momentum(const MomentumPiece& m, size_t i) {
  if (m.values) return m.values[i];
  const float x = pm(get_bit(m.bits, i), m.sk);
  return m.mask ? x * m.mask[i - m.mask_base] : x;
}
inline G momentum16(const MomentumPiece& m, size_t i) {
  if (m.values) return load(m.values + i);
  const G x = signed_from_bits(load_bits16(m.bits, i), m.sk);
  return m.mask ? mul(x, load(m.mask + (i - m.mask_base))) : x;
}

// Calls scalar(i) on the head and tail of [b, e) and group(i) on each aligned run of 16; enter()
// and leave() bracket the aligned middle (to move lane sums into and out of vector registers).
template <class Scalar, class Group, class Enter, class Leave>
inline void walk(size_t b, size_t e, Scalar scalar, Group group, Enter enter, Leave leave) {
  size_t i = b;
  const size_t aligned = (b + 15) & ~size_t{15};
  for (; i < e && i < aligned; ++i) scalar(i);
  if (i + 16 <= e) {
    enter();
    for (; i + 16 <= e; i += 16) group(i);
    leave();
  }
  for (; i < e; ++i) scalar(i);
}
inline void nop() {}

// --- compression -----------------------------------------------------------------------------
template <bool kMomentum, bool kStream>
double compress_t(size_t b, size_t e, const CompressArgs& a) {
  Lanes lanes;
  Acc acc;
  const float s = a.prev_scale;
  auto scalar = [&](size_t i) {
    const float err = a.prev[i] - pm(a.prev[i] >= 0.0f, s);
    const float x = kMomentum ? (a.beta1 * momentum(a.m, i) + a.one_minus_beta1 * a.g[i]) * a.k : a.x[i];
    const float c = x + err;
    a.next[i] = c;
    set_bit(a.bits, i, c >= 0.0f);
    lanes.add(i, c);
  };
  const G b1 = set1(a.beta1), omb1 = set1(a.one_minus_beta1), k = set1(a.k);
  auto group = [&](size_t i) {
    ahead(a.prev, i);
    if constexpr (kMomentum) ahead(a.g, i);
    else ahead(a.x, i);
    const G prev = load(a.prev + i);
    const G err = sub(prev, pm_sign(prev, s));
    const G x = kMomentum ? mul(add(mul(b1, momentum16(a.m, i)), mul(omb1, load(a.g + i))), k)
                          : load(a.x + i);
    const G c = add(x, err);
    if constexpr (kStream) stream(a.next + i, c);
    else store(a.next + i, c);
    store_bits16(a.bits, i, ge0_bits(c));
    acc.add_sq(c);
  };
  auto leave = [&] {
    acc.store(lanes.v);
    if constexpr (kStream) stream_fence();
  };
  walk(b, e, scalar, group, [&] { acc.load(lanes.v); }, leave);
  return lanes.fold();
}

inline double compress(size_t b, size_t e, const CompressArgs& a) {
  // Streaming stores skip the read-for-ownership of `next` when it is another, large buffer.
  const bool stream = a.stream && a.next != a.prev && reinterpret_cast<uintptr_t>(a.next) % 64 == 0;
  if (a.x) return stream ? compress_t<false, true>(b, e, a) : compress_t<false, false>(b, e, a);
  return stream ? compress_t<true, true>(b, e, a) : compress_t<true, false>(b, e, a);
}

// kPow2: P is a power of two, so dividing by P and multiplying by 1/P are the same exact scaling,
// and the pass divides nothing.
template <bool kPow2>
double server_t(size_t b, size_t e, const ServerArgs& a) {
  Lanes lanes;
  Acc acc;
  const float world = static_cast<float>(a.world), fs = a.f_scale;
  auto scalar = [&](size_t i) {
    float sum = 0.0f;
    for (int p = 0; p < a.world; ++p) sum += pm(get_bit(a.worker_bits + p * a.stride, i), a.scales[p]);
    const float y = sum / world + (a.f[i] - pm(a.f[i] >= 0.0f, fs));
    a.f[i] = y;
    set_bit(a.out_bits, i, y >= 0.0f);
    lanes.add(i, y);
  };
  const G gw = set1(world), inv = set1(1.0f / world);
  auto group = [&](size_t i) {
    G sum = set1(0.0f);
    for (int p = 0; p < a.world; ++p)
      sum = add(sum, signed_from_bits(load_bits16(a.worker_bits + p * a.stride, i), a.scales[p]));
    ahead(a.f, i);
    const G f = load(a.f + i);
    const G y = add(kPow2 ? mul(sum, inv) : div(sum, gw), sub(f, pm_sign(f, fs)));
    store(a.f + i, y);
    store_bits16(a.out_bits, i, ge0_bits(y));
    acc.add_sq(y);
  };
  walk(b, e, scalar, group, [&] { acc.load(lanes.v); }, [&] { acc.store(lanes.v); });
  return lanes.fold();
}

inline double server(size_t b, size_t e, const ServerArgs& a) {
  const bool pow2 = a.world > 0 && (a.world & (a.world - 1)) == 0;
  return pow2 ? server_t<true>(b, e, a) : server_t<false>(b, e, a);
}

inline void decode(size_t b, size_t e, const DecodeArgs& a) {
  const uint8_t* bits = a.bits;
  float* out = a.out;
  const float s = a.scale;
  auto scalar = [&](size_t i) { out[i] = pm(get_bit(bits, i), s); };
  // Aligned groups of 16 start 64 bytes apart, so one check on the base decides for all of them.
  if (a.stream && reinterpret_cast<uintptr_t>(out) % 64 == 0) {
    walk(b, e, scalar, [&](size_t i) { stream(out + i, signed_from_bits(load_bits16(bits, i), s)); },
         nop, stream_fence);
  } else {
    walk(b, e, scalar, [&](size_t i) { store(out + i, signed_from_bits(load_bits16(bits, i), s)); },
         nop, nop);
  }
}

// --- LAMB ------------------------------------------------------------------------------------
// m' = b1*m + (1-b1)*g;  v' = b2*v + (1-b2)*(g*g);  u = m'/(sqrt(v')+eps) + wd*w
template <bool kUpdate>
LambSums lamb_t(size_t b, size_t e, const LambArgs& a) {
  Lanes lw, lu;
  Acc aw, au;
  auto scalar = [&](size_t i) {
    const float g = a.g[i], w = a.w[i];
    const float m = a.beta1 * a.m[i] + a.one_minus_beta1 * g;
    const float v = a.beta2 * a.v[i] + a.one_minus_beta2 * (g * g);
    const float u = m / (std::sqrt(v) + a.eps) + a.weight_decay * w;
    if constexpr (kUpdate) {
      a.m[i] = m;
      a.v[i] = v;
      a.w[i] = w - a.coef * u;
    } else {
      lw.add(i, w);
      lu.add(i, u);
    }
  };
  const G b1 = set1(a.beta1), omb1 = set1(a.one_minus_beta1), b2 = set1(a.beta2),
          omb2 = set1(a.one_minus_beta2), eps = set1(a.eps), wd = set1(a.weight_decay),
          coef = set1(a.coef);
  auto group = [&](size_t i) {
    const G g = load(a.g + i), w = load(a.w + i);
    const G m = add(mul(b1, load(a.m + i)), mul(omb1, g));
    const G v = add(mul(b2, load(a.v + i)), mul(omb2, mul(g, g)));
    const G u = add(div(m, add(sqrt(v), eps)), mul(wd, w));
    if constexpr (kUpdate) {
      store(a.m + i, m);
      store(a.v + i, v);
      store(a.w + i, sub(w, mul(coef, u)));
    } else {
      aw.add_sq(w);
      au.add_sq(u);
    }
  };
  auto enter = [&] { aw.load(lw.v); au.load(lu.v); };
  auto leave = [&] { aw.store(lw.v); au.store(lu.v); };
  walk(b, e, scalar, group, enter, leave);
  return {lw.fold(), lu.fold()};
}

inline LambSums lamb_norms(size_t b, size_t e, const LambArgs& a) { return lamb_t<false>(b, e, a); }
inline void lamb_update(size_t b, size_t e, const LambArgs& a) { lamb_t<true>(b, e, a); }

// --- 1-bit LAMB compression stage --------------------------------------------------------------
// g~ = (m - b1*m_prev)/(1-b1); vf' = b2*vf + (1-b2)*(g~*g~);
// u0 = m/d; u = u0 + wd*w; ratio = d/(sqrt(vf')+eps)   (d = sqrt(v)+eps, given)
//
// kTwoValues: both momenta are unmasked signs, m = +-x and m_prev = +-y with x, y fixed over the
// piece. IEEE arithmetic is symmetric in sign, so g~ is +-(x - b1*y)/(1-b1) where the two signs
// agree and +-(x + b1*y)/(1-b1) where they differ: g~^2 takes two values, worked out once, and the
// pass does one divide per element fewer, with the same bits.
template <bool kTwoValues>
OnebitSums onebit_norms_t(size_t b, size_t e, const OnebitArgs& a) {
  Lanes lw, lu, lu0;
  Acc aw, au, au0;
  float max_lanes[16];
  for (float& x : max_lanes) x = 0.0f;
  auto scalar = [&](size_t i) {
    const float m = momentum(a.m, i);
    const float gt = (m - a.beta1 * momentum(a.m_prev, i)) / a.one_minus_beta1;
    const float vf = a.beta2 * a.v_fresh[i] + a.one_minus_beta2 * (gt * gt);
    const float w = a.w[i];
    const float d = a.d[i];
    const float u0 = m / d;
    const float u = u0 + a.weight_decay * w;
    const float ratio = d / (std::sqrt(vf) + a.eps);
    a.v_fresh[i] = vf;
    lw.add(i, w);
    lu.add(i, u);
    lu0.add(i, u0);
    float& mx = max_lanes[i & 15];
    mx = ratio > mx ? ratio : mx;
  };
  const G b1 = set1(a.beta1), omb1 = set1(a.one_minus_beta1), b2 = set1(a.beta2),
          omb2 = set1(a.one_minus_beta2), eps = set1(a.eps), wd = set1(a.weight_decay);
  G mx = set1(0.0f);
  float gt_sq_agree = 0.0f, gt_sq_differ = 0.0f;
  if constexpr (kTwoValues) {
    const float b1y = a.beta1 * a.m_prev.sk;
    const float agree = (a.m.sk - b1y) / a.one_minus_beta1, differ = (a.m.sk + b1y) / a.one_minus_beta1;
    gt_sq_agree = agree * agree;
    gt_sq_differ = differ * differ;
  }
  auto group = [&](size_t i) {
    ahead(a.d, i);
    ahead(a.v_fresh, i);
    ahead(a.w, i);
    const G m = momentum16(a.m, i);
    G gt_sq;
    if constexpr (kTwoValues) {
      const auto agree = static_cast<uint16_t>(~(load_bits16(a.m.bits, i) ^ load_bits16(a.m_prev.bits, i)));
      gt_sq = from_bits(agree, gt_sq_agree, gt_sq_differ);
    } else {
      const G gt = div(sub(m, mul(b1, momentum16(a.m_prev, i))), omb1);
      gt_sq = mul(gt, gt);
    }
    const G vf = add(mul(b2, load(a.v_fresh + i)), mul(omb2, gt_sq));
    const G w = load(a.w + i);
    const G d = load(a.d + i);
    const G u0 = div(m, d);
    const G u = add(u0, mul(wd, w));
    store(a.v_fresh + i, vf);
    aw.add_sq(w);
    au.add_sq(u);
    au0.add_sq(u0);
    mx = max(div(d, add(sqrt(vf), eps)), mx);
  };
  auto enter = [&] {
    aw.load(lw.v); au.load(lu.v); au0.load(lu0.v);
    mx = load(max_lanes);
  };
  auto leave = [&] {
    aw.store(lw.v); au.store(lu.v); au0.store(lu0.v);
    store_max(max_lanes, mx);
  };
  walk(b, e, scalar, group, enter, leave);
  float m = 0.0f;
  for (float x : max_lanes) m = x > m ? x : m;
  return {lw.fold(), lu.fold(), lu0.fold(), m};
}

inline OnebitSums onebit_norms(size_t b, size_t e, const OnebitArgs& a) {
  const bool two_values = !a.m.values && !a.m_prev.values && !a.m.mask && !a.m_prev.mask;
  return two_values ? onebit_norms_t<true>(b, e, a) : onebit_norms_t<false>(b, e, a);
}

// w <- w - coef * (m/d + wd*w)   (d = sqrt(v)+eps, given)
inline void frozen_update(size_t b, size_t e, const FrozenArgs& a) {
  auto scalar = [&](size_t i) {
    const float w = a.w[i];
    const float u = momentum(a.m, i) / a.d[i] + a.weight_decay * w;
    a.w[i] = w - a.coef * u;
  };
  const G wd = set1(a.weight_decay), coef = set1(a.coef);
  auto group = [&](size_t i) {
    ahead(a.d, i);
    ahead(a.w, i);
    const G w = load(a.w + i);
    const G u = add(div(momentum16(a.m, i), load(a.d + i)), mul(wd, w));
    store(a.w + i, sub(w, mul(coef, u)));
  };
  walk(b, e, scalar, group, nop, nop);
}

inline constexpr PieceKernels kTable = {compress,    server,       decode,       lamb_norms,
                                        lamb_update, onebit_norms, frozen_update};

}  // namespace ONEBIT_ISA_NS
