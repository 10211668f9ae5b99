// Tests of the CPU kernels: every fast kernel against the scalar reference (reference.hpp) on every
// instruction set this CPU runs, at 1 and 3 threads, on fresh random inputs of awkward sizes/layouts.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <iomanip>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "onebit/aligned.hpp"
#include "onebit/kernels.hpp"
#include "onebit/thread_pool.hpp"
#include "reference.hpp"

namespace onebit::kernels {
namespace {

constexpr size_t kPad = 19;      // float elements after n in every buffer: must come back untouched
constexpr size_t kPadBytes = 3;  // bytes after the last sign byte: likewise
constexpr int kSteps = 4;        // consecutive compressions, so the carried (lazy) error is exercised

uint64_t test_seed() {
  if (const char* s = std::getenv("ONEBIT_TEST_SEED")) return std::stoull(s);
  std::random_device rd;
  return (uint64_t{rd()} << 32) | rd();
}
std::string seed_note(uint64_t seed) {
  return "random seed " + std::to_string(seed) + " (rerun with ONEBIT_TEST_SEED=" +
         std::to_string(seed) + ")";
}
// One scale for a whole buffer, as the kernels take it; and the world of a list of worker scales.
std::vector<float> single(float s) { return {s}; }
int world(const std::vector<float>& worker_scales) { return static_cast<int>(worker_scales.size()); }

// One buffer layout: n elements cut into layers and allreduce chunks, as the optimizers use them.
struct Case {
  size_t n = 0;
  std::vector<size_t> bounds;  // FlatLayout::boundaries() form; empty means one layer
  size_t chunk = 0;            // allreduce chunk length, a multiple of 64 (0: one chunk)
  int world = 1;               // P for the server stage
  size_t layers() const { return bounds.empty() ? 1 : bounds.size() - 1; }
  size_t chunks() const { return chunk && n ? (n + chunk - 1) / chunk : 1; }
  std::string describe() const {
    std::ostringstream s;
    s << "n=" << n << " layers=" << layers() << " chunk=" << chunk << " P=" << world;
    return s.str();
  }
};

std::vector<Case> make_cases(std::mt19937_64& rng) {
  const size_t sizes[] = {0, 1, 15, 16, 17, 63, 64, 65, 127, 1009, 40961, 65536, 100003};
  std::vector<Case> cases;
  for (size_t si = 0; si < std::size(sizes); ++si) {
    const size_t n = sizes[si];
    cases.push_back({n, {}, 0, 1});
    // Many small layers (empty ones included), boundaries almost never a multiple of 8 or 16.
    std::vector<size_t> small{0};
    std::uniform_int_distribution<size_t> len(0, 37);
    while (small.back() < n) small.push_back(std::min(n, small.back() + len(rng)));
    if (small.size() == 1) small.push_back(n);
    cases.push_back({n, small, 64, 2});
    // A few large layers at random cuts, with an empty first and last layer; chunks as in §2.
    std::uniform_int_distribution<size_t> cut(0, n);
    std::vector<size_t> big{0, 0, cut(rng), cut(rng), cut(rng)};
    std::sort(big.begin(), big.end());
    big.push_back(n);
    big.push_back(n);
    const int world = 3 + static_cast<int>(si % 2);
    const size_t unit = 64 * static_cast<size_t>(world);
    cases.push_back({n, big, (n + unit - 1) / unit * unit / static_cast<size_t>(world), world});
  }
  return cases;
}

// Every input any kernel needs, generated once per case so fast path and reference see the same.
struct Data {
  MomentParams p;
  std::vector<std::vector<float>> x, g;  // one per step
  std::vector<float> m, v, v_fresh, w, prev, mask_store, k, coef, chunk_scales, prev_chunk_scales;
  float prev_scale = 0, f_scale = 0;
  size_t stride = 0;  // bytes per worker chunk of sign bits
  std::vector<std::vector<uint8_t>> worker_bits;
  std::vector<std::vector<float>> worker_scales;
  std::vector<uint8_t> bits_init;
  std::vector<const float*> masks;
};

Data make_data(const Case& c, std::mt19937_64& rng) {
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  std::normal_distribution<float> normal;
  std::uniform_int_distribution<int> exponent(-8, 8), byte(0, 255);
  // Signed values over many magnitudes, with exact +0 and -0 sprinkled in.
  auto value = [&] {
    const float u = unit(rng);
    if (u < 0.04f) return 0.0f;
    if (u < 0.08f) return -0.0f;
    if (u < 0.09f) return std::ldexp(normal(rng), -135);  // subnormal: no flush-to-zero anywhere
    return std::ldexp(normal(rng), exponent(rng));
  };
  // Every float buffer ends in the same sentinel tail, so outputs can be compared whole.
  auto buffer = [&](auto gen) {
    std::vector<float> b(c.n + kPad);
    for (size_t i = 0; i < c.n; ++i) b[i] = gen();
    for (size_t i = 0; i < kPad; ++i) b[c.n + i] = 1000.0f + static_cast<float>(i);
    return b;
  };
  auto bytes = [&](size_t count) {
    std::vector<uint8_t> b(count);
    for (auto& x : b) x = static_cast<uint8_t>(byte(rng));
    return b;
  };
  auto nonneg = [&] { const float x = value(); return x * x; };
  auto per = [&](size_t count, float lo, float hi) {
    std::vector<float> r(count);
    for (auto& x : r) x = lo + (hi - lo) * unit(rng);
    return r;
  };
  Data d;
  d.p.weight_decay = unit(rng) < 0.5f ? 0.0f : 0.01f;
  for (int t = 0; t < kSteps; ++t) {
    d.x.push_back(buffer(value));
    d.g.push_back(buffer(value));
  }
  d.m = buffer(value);
  d.v = buffer(nonneg);
  d.v_fresh = buffer(nonneg);
  d.w = buffer(value);
  d.prev = buffer(value);
  d.mask_store = buffer([&] { return unit(rng) < 0.5f ? 0.0f : 1.0f; });
  d.k = per(c.layers(), 0.25f, 4.0f);
  d.coef = per(c.layers(), 1e-4f, 1e-2f);
  d.chunk_scales = per(c.chunks(), 0.0f, 2.0f);
  d.chunk_scales[0] = unit(rng) < 0.5f ? 0.0f : d.chunk_scales[0];  // a zero scale decodes to +-0
  d.prev_chunk_scales = per(c.chunks(), 0.0f, 2.0f);
  d.prev_scale = unit(rng);
  d.f_scale = unit(rng);
  d.stride = (c.n + 63) / 64 * 8;
  for (int t = 0; t < kSteps; ++t) {
    d.worker_bits.push_back(bytes(d.stride * static_cast<size_t>(c.world)));
    d.worker_scales.push_back(per(static_cast<size_t>(c.world), 0.0f, 2.0f));
  }
  d.bits_init = bytes((c.n + 7) / 8 + kPadBytes);
  const std::vector<size_t> b = ref::bounds_or_one(c.n, c.bounds);
  for (size_t l = 0; l < c.layers(); ++l)
    d.masks.push_back(l % 2 ? d.mask_store.data() + b[l] : nullptr);
  return d;
}

// What one run of a kernel produced: element-wise outputs as raw bytes, and sums.
struct Out {
  struct Blob {
    std::string name;
    size_t elem;  // bytes per element; 0 marks packed sign bits
    std::vector<uint8_t> bytes;
  };
  std::vector<Blob> blobs;
  std::vector<std::pair<std::string, std::vector<double>>> sums;
  std::vector<float> scales;  // scales the fast path derived, which the reference then uses

  template <class T>
  Out& blob(std::string name, const std::vector<T>& v) {
    const auto* p = reinterpret_cast<const uint8_t*>(v.data());
    blobs.push_back({std::move(name), std::is_same_v<T, uint8_t> ? 0 : sizeof(T),
                     {p, p + v.size() * sizeof(T)}});
    return *this;
  }
  Out& sum(std::string name, std::vector<double> v) {
    sums.emplace_back(std::move(name), std::move(v));
    return *this;
  }
};

std::string first_difference(const Out::Blob& a, const Out::Blob& b) {
  size_t i = 0;
  while (i < a.bytes.size() && a.bytes[i] == b.bytes[i]) ++i;
  std::ostringstream s;
  s << a.name << " differs at ";
  if (a.elem == 0) {
    const int bit = std::countr_zero(static_cast<unsigned>(a.bytes[i] ^ b.bytes[i]));
    s << "element " << i * 8 + static_cast<size_t>(bit) << " (sign bit)";
  } else if (a.elem == 4) {
    float x, y;
    std::memcpy(&x, &a.bytes[i / 4 * 4], 4);
    std::memcpy(&y, &b.bytes[i / 4 * 4], 4);
    s << "element " << i / 4 << ": " << std::setprecision(9) << x << " vs " << y;
  } else {
    s << "byte " << i;
  }
  return s.str();
}

// Element-wise outputs bitwise equal; sums bitwise equal (exact) or within relative 1e-12.
void expect_same(const Out& a, const Out& b, const std::string& what, bool exact_sums) {
  ASSERT_EQ(a.blobs.size(), b.blobs.size()) << what;
  for (size_t i = 0; i < a.blobs.size(); ++i) {
    ASSERT_EQ(a.blobs[i].bytes.size(), b.blobs[i].bytes.size()) << what << ": " << a.blobs[i].name;
    if (a.blobs[i].bytes != b.blobs[i].bytes)
      ADD_FAILURE() << what << ", output #" << i << ": " << first_difference(a.blobs[i], b.blobs[i]);
  }
  ASSERT_EQ(a.sums.size(), b.sums.size()) << what;
  for (size_t i = 0; i < a.sums.size(); ++i) {
    const auto& [name, x] = a.sums[i];
    const auto& y = b.sums[i].second;
    ASSERT_EQ(x.size(), y.size()) << what << ": " << name;
    for (size_t j = 0; j < x.size(); ++j) {
      const bool ok = exact_sums ? std::memcmp(&x[j], &y[j], sizeof(double)) == 0
                                 : std::abs(x[j] - y[j]) <= 1e-12 * std::max(std::abs(x[j]), std::abs(y[j]));
      if (!ok) {
        ADD_FAILURE() << what << ", sum #" << i << " " << name << "[" << j << "]: " << std::setprecision(17)
                      << x[j] << " vs " << y[j];
        break;
      }
    }
  }
}

// One run of a kernel: the fast kernel when pool is set, else the reference, which takes the scales
// the fast run derived (its own index-order sum may round to a scale one ulp away: a false failure).
struct Run {
  const Case& c;
  const Partition& part;
  const Data& d;
  ThreadPool* pool;
  const std::vector<float>& scales;
};
using Runner = Out (*)(const Run&);

// A momentum in the form a kernel reads (Momentum), and the plain values the reference reads for it:
// d.m itself, or the sign bits worker_bits[which] decoded with `scales`, d.k and `masks`.
struct MomentumInput {
  Momentum m;
  std::vector<float> plain;
};
MomentumInput momentum_input(const Run& r, bool signs, size_t which, const std::vector<float>& scales,
                             const float* const* masks) {
  if (!signs) return {{.values = r.d.m.data()}, r.d.m};
  const uint8_t* bits = r.d.worker_bits[which].data();
  std::vector<float> plain = r.d.m;  // the sentinel tail stays
  ref::decode_momentum(r.c.n, r.c.bounds, r.c.chunk, bits, scales.data(), r.d.k.data(), masks, plain.data());
  return {{.bits = bits, .scales = scales.data(), .k = r.d.k.data(), .masks = masks}, std::move(plain)};
}

// kSteps compressions in a row with the state carried: steps 0-1 alternate buffers, 2-3 in place.
// With kMomentum, x is the scaled momentum, its m plain (kSigns false) or sign bits with masks.
template <bool kMomentum, bool kSigns = false>
Out run_compress(const Run& r) {
  const Data& d = r.d;
  const size_t n = r.c.n;
  const MomentumInput m = momentum_input(r, kSigns, 1, d.prev_chunk_scales, d.masks.data());
  std::vector<float> buf[2] = {d.prev, d.prev};
  std::vector<float> e = d.prev;  // the reference's explicit error
  ref::update_error(n, d.prev.data(), d.prev_scale, e.data());
  std::vector<uint8_t> bits = d.bits_init;
  float scale = d.prev_scale;
  Out out;
  for (size_t t = 0, cur = 0; t < kSteps; ++t) {
    const float* k = t % 2 ? nullptr : d.k.data();
    const size_t nxt = t < 2 ? 1 - cur : cur;
    float* c = buf[nxt].data();
    std::vector<float> err = d.prev;
    double sum;
    if (r.pool) {
      sum = kMomentum ? compress_momentum(r.part, *r.pool, m.m, d.g[t].data(), d.p.beta1, k,
                                          buf[cur].data(), single(scale), c, bits.data())
                      : compress(r.part, *r.pool, d.x[t].data(), buf[cur].data(), single(scale), c, bits.data());
      out.scales.push_back(scale = scale_from_sum(sum, n));
      materialize_error(r.part, std::span(buf[nxt]).first(n), single(scale), std::span(err).first(n));
    } else {
      sum = kMomentum ? ref::compress_momentum(n, r.c.bounds, m.plain.data(), d.g[t].data(), d.p.beta1, k,
                                               e.data(), c, bits.data())
                      : ref::compress(n, d.x[t].data(), e.data(), c, bits.data());
      ref::update_error(n, c, scale = r.scales.at(t), e.data());
      err = e;
    }
    out.blob("compensated c", buf[nxt]).blob("sign bits", bits).blob("error", err).sum("sum c^2", {sum});
    cur = nxt;
  }
  return out;
}

// kSteps server stages in a row: the fast path keeps y, the reference an explicit error.
Out run_server(const Run& r) {
  const Data& d = r.d;
  const size_t n = r.c.n;
  std::vector<float> y = d.m, fe = d.m;
  ref::update_error(n, d.m.data(), d.f_scale, fe.data());
  std::vector<uint8_t> bits = d.bits_init;
  float scale = d.f_scale;
  Out out;
  for (size_t t = 0; t < kSteps; ++t) {
    const auto& wb = d.worker_bits[t];
    std::vector<float> err = d.m;
    double sum;
    if (r.pool) {
      sum = server_average(r.part, *r.pool, wb.data(), d.stride, d.worker_scales[t], world(d.worker_scales[t]), y.data(),
                           single(scale), bits.data());
      out.scales.push_back(scale = scale_from_sum(sum, n));
      materialize_error(r.part, std::span(y).first(n), single(scale), std::span(err).first(n));
    } else {
      sum = ref::server_average(n, wb.data(), d.stride, d.worker_scales[t], fe.data(), y.data(), bits.data());
      ref::update_error(n, y.data(), scale = r.scales.at(t), fe.data());
      err = fe;
    }
    out.blob("y", y).blob("server sign bits", bits).blob("error", err).sum("sum y^2", {sum});
  }
  return out;
}

Out run_decode(const Run& r) {
  std::vector<float> o = r.d.w;
  const uint8_t* bits = r.d.worker_bits[0].data();
  r.pool ? decode(r.part, *r.pool, bits, r.d.chunk_scales.data(), o.data())
         : ref::decode(r.c.n, r.c.chunk, bits, r.d.chunk_scales.data(), o.data());
  return Out().blob("decoded", o);
}

Out run_lamb(const Run& r) {
  const Data& d = r.d;
  std::vector<float> m = d.m, v = d.v, w = d.w;
  std::vector<double> w_sq(r.c.layers(), -1), u_sq(r.c.layers(), -1);
  const float* g = d.g[0].data();
  if (r.pool) {
    lamb_norms(r.part, *r.pool, g, m.data(), v.data(), w.data(), d.p, w_sq.data(), u_sq.data());
    lamb_update(r.part, *r.pool, g, m.data(), v.data(), w.data(), d.p, d.coef.data());
  } else {
    ref::lamb_norms(r.c.n, r.c.bounds, g, m.data(), v.data(), w.data(), d.p, w_sq.data(), u_sq.data());
    ref::lamb_update(r.c.n, r.c.bounds, g, m.data(), v.data(), w.data(), d.p, d.coef.data());
  }
  return Out().sum("||w||^2", w_sq).sum("||u||^2", u_sq).blob("m", m).blob("v", v).blob("w", w);
}

// The frozen denominator the fast kernels take, sqrt(v) + eps (the references take v and eps).
std::vector<float> frozen_d(const Run& r) {
  std::vector<float> d(r.d.v.size());
  frozen_denominator(*r.pool, r.d.v, r.d.p.eps, d);
  return d;
}

// The synchronized momentum as sign bits, m_prev plain or as the previous sign bits; without masks,
// then with every odd layer masked.
template <bool kSignsPrev>
Out run_onebit_lamb(const Run& r) {
  const Data& d = r.d;
  const size_t L = r.c.layers();
  Out out;
  for (const float* const* masks : {static_cast<const float* const*>(nullptr), d.masks.data()}) {
    std::vector<float> v_fresh = d.v_fresh, max_ratio(L, -1.0f);
    std::vector<double> w_sq(L, -1), u_sq(L, -1), u0_sq(L, -1);
    const OnebitLambSums sums{w_sq.data(), u_sq.data(), u0_sq.data(), max_ratio.data()};
    const MomentumInput m = momentum_input(r, true, 0, d.chunk_scales, masks);
    const MomentumInput prev = momentum_input(r, kSignsPrev, 1, d.prev_chunk_scales, masks);
    r.pool ? onebit_lamb_norms(r.part, *r.pool, m.m, prev.m, d.p, frozen_d(r).data(), v_fresh.data(), d.w.data(), sums)
           : ref::onebit_lamb_norms(r.c.n, r.c.bounds, m.plain.data(), prev.plain.data(), d.p, d.v.data(),
                                    v_fresh.data(), d.w.data(), sums);
    const std::string tag = masks ? " (masked)" : "";
    out.blob("v_fresh" + tag, v_fresh).blob("max ratio" + tag, max_ratio);
    out.sum("||w||^2" + tag, w_sq).sum("||u||^2" + tag, u_sq).sum("||u0||^2" + tag, u0_sq);
  }
  return out;
}

template <bool kSigns>
Out run_frozen_update(const Run& r) {
  const Data& d = r.d;
  const MomentumInput m = momentum_input(r, kSigns, 1, d.chunk_scales, d.masks.data());
  std::vector<float> w = d.w;
  r.pool ? frozen_update(r.part, *r.pool, m.m, frozen_d(r).data(), w.data(), d.p.weight_decay, d.coef.data())
         : ref::frozen_update(r.c.n, r.c.bounds, m.plain.data(), d.v.data(), w.data(), d.p.eps,
                              d.p.weight_decay, d.coef.data());
  return Out().blob("w", w);
}

// Sign bits with masks, then without masks and k = 1 (1-bit Adam's), then a plain buffer.
Out run_decode_momentum(const Run& r) {
  Out out;
  MomentumInput adam{{.bits = r.d.worker_bits[3].data(), .scales = r.d.chunk_scales.data()}, r.d.m};
  ref::decode_momentum(r.c.n, r.c.bounds, r.c.chunk, adam.m.bits, adam.m.scales, nullptr, nullptr,
                       adam.plain.data());
  const MomentumInput inputs[] = {momentum_input(r, true, 2, r.d.chunk_scales, r.d.masks.data()), adam,
                                  momentum_input(r, false, 0, {}, nullptr)};
  for (const MomentumInput& in : inputs) {
    std::vector<float> o = r.d.w;
    if (r.pool)
      decode_momentum(r.part, *r.pool, in.m, o.data());
    else
      std::copy(in.plain.begin(), in.plain.begin() + static_cast<std::ptrdiff_t>(r.c.n), o.begin());
    out.blob("decoded momentum", o);
  }
  return out;
}

Out run_layer_sq_norms(const Run& r) {
  std::vector<double> sq(r.c.layers(), -1);
  r.pool ? layer_sq_norms(r.part, *r.pool, r.d.x[0].data(), sq.data())
         : ref::layer_sq_norms(r.c.n, r.c.bounds, r.d.x[0].data(), sq.data());
  return Out().sum("||x||^2", sq);
}

Out run_divide(const Run& r) {
  std::vector<float> x = r.d.x[0];
  if (r.pool)
    divide(*r.pool, std::span(x).first(r.c.n), 3.0f);
  else
    for (size_t i = 0; i < r.c.n; ++i) x[i] = x[i] / 3.0f;
  return Out().blob("x / 3", x);
}

// For a fresh random set of cases: fast path at 1 and 3 threads bitwise identical (sums included),
// and equal to the reference (element-wise bitwise, sums within 1e-12).
void check_against_reference(Runner run) {
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937_64 rng(seed);
  ThreadPool one(1), three(3);
  for (const Case& c : make_cases(rng)) {
    SCOPED_TRACE(c.describe());
    const Data d = make_data(c, rng);
    const Partition part(c.n, c.bounds, c.chunk);
    const Out f1 = run({c, part, d, &one, {}});
    const Out f3 = run({c, part, d, &three, {}});
    expect_same(f1, f3, "ThreadPool(1) vs ThreadPool(3)", true);
    expect_same(f3, run({c, part, d, nullptr, f3.scales}), "fast vs reference", false);
    if (::testing::Test::HasFailure()) return;  // one case is enough to debug; avoid a flood
  }
}

// Runs the test under the parameter's ISA and restores the previous one afterwards.
class IsaTest : public ::testing::TestWithParam<Isa> {
 protected:
  void SetUp() override {
    if (!isa_supported(GetParam()))
      GTEST_SKIP() << "this CPU (or this build) lacks " << isa_name(GetParam());
    saved_ = active_isa();
    restore_ = true;
    set_active_isa(GetParam());
  }
  void TearDown() override {
    if (restore_) set_active_isa(saved_);
  }

 private:
  Isa saved_ = Isa::kGeneric;
  bool restore_ = false;
};

std::string isa_param_name(const ::testing::TestParamInfo<Isa>& info) { return isa_name(info.param); }

using Kernels = IsaTest;
TEST_P(Kernels, CompressMatchesReferenceWithLazyError) { check_against_reference(run_compress<false>); }
TEST_P(Kernels, CompressMomentumMatchesReference) { check_against_reference(run_compress<true>); }
TEST_P(Kernels, CompressMomentumFromSignsMatchesReference) { check_against_reference(run_compress<true, true>); }
TEST_P(Kernels, ServerAverageMatchesReferenceWithLazyError) { check_against_reference(run_server); }
TEST_P(Kernels, DecodeMatchesReference) { check_against_reference(run_decode); }
TEST_P(Kernels, LambMatchesReference) { check_against_reference(run_lamb); }
TEST_P(Kernels, OnebitLambNormsMatchReference) { check_against_reference(run_onebit_lamb<false>); }
TEST_P(Kernels, OnebitLambNormsFromSignsMatchReference) { check_against_reference(run_onebit_lamb<true>); }
TEST_P(Kernels, FrozenUpdateMatchesReference) { check_against_reference(run_frozen_update<false>); }
TEST_P(Kernels, FrozenUpdateFromSignsMatchesReference) { check_against_reference(run_frozen_update<true>); }
TEST_P(Kernels, DecodeMomentumMatchesReference) { check_against_reference(run_decode_momentum); }
TEST_P(Kernels, LayerSqNormsMatchReference) { check_against_reference(run_layer_sq_norms); }
TEST_P(Kernels, DivideMatchesReference) { check_against_reference(run_divide); }

// A decode output over 32 MiB takes the non-temporal store path when its base is 64-byte aligned;
// one float past that base it takes the plain path. Both must match the reference, pad untouched.
TEST_P(Kernels, DecodeLargeOutputMatchesReference) {
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937_64 rng(seed);
  const size_t n = (size_t{32} << 20) / sizeof(float) + 4099, chunk = (n + 191) / 192 * 64;
  const std::vector<size_t> bounds{0, 3, n / 3 + 5, n};
  const Partition part(n, bounds, chunk);
  std::vector<uint8_t> bits((n + 7) / 8);
  for (auto& b : bits) b = static_cast<uint8_t>(rng());
  const std::vector<float> scales{0.75f, 1.5f, 0.0f};
  auto aligned = [](std::vector<float>& v) {  // first 64-byte boundary inside v
    const auto p = reinterpret_cast<uintptr_t>(v.data());
    return v.data() + ((p + 63) / 64 * 64 - p) / sizeof(float);
  };
  ThreadPool one(1), three(3);
  for (size_t offset : {0, 1}) {
    SCOPED_TRACE("output base 64-byte aligned + " + std::to_string(offset) + " floats");
    std::vector<float> want(n + kPad + 17, 7.0f), got1 = want, got3 = want;
    float *w = aligned(want) + offset, *g1 = aligned(got1) + offset, *g3 = aligned(got3) + offset;
    ref::decode(n, chunk, bits.data(), scales.data(), w);
    decode(part, one, bits.data(), scales.data(), g1);
    decode(part, three, bits.data(), scales.data(), g3);
    EXPECT_EQ(std::memcmp(g1, w, (n + kPad) * sizeof(float)), 0) << "1 thread vs reference";
    EXPECT_EQ(std::memcmp(g3, w, (n + kPad) * sizeof(float)), 0) << "3 threads vs reference";
  }
}

// A compression whose output buffer is large enough for streaming (non-temporal) stores, with the
// output in a separate buffer (the double-buffered worker error) and in place.
TEST_P(Kernels, CompressLargeBufferMatchesReference) {
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_note(seed));
  const size_t n = (size_t{32} << 20) / sizeof(float) + 4099;
  const std::vector<size_t> bounds{0, 3, n / 3 + 5, n};
  const Partition part(n, bounds);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  AlignedVector<float> x(n), prev(n), next(n, 9.0f);
  for (size_t i = 0; i < n; ++i) x[i] = d(rng), prev[i] = d(rng);
  const float prev_scale = 0.5f;
  std::vector<float> err(n), want_c(n);
  ref::update_error(n, prev.data(), prev_scale, err.data());
  std::vector<uint8_t> want_bits(n / 8 + 1, 0), bits1(want_bits), bits3(want_bits);
  const double want = ref::compress(n, x.data(), err.data(), want_c.data(), want_bits.data());
  ThreadPool one(1), three(3);
  const double got1 = compress(part, one, x.data(), prev.data(), single(prev_scale), next.data(), bits1.data());
  EXPECT_EQ(std::memcmp(next.data(), want_c.data(), n * sizeof(float)), 0) << "separate output";
  EXPECT_EQ(bits1, want_bits);
  // The reference sums 8.4M terms in one sequence: its own rounding error reaches ~n*eps = 1e-9.
  EXPECT_NEAR(got1, want, 1e-9 * want);
  // In place: next == prev, the path without streaming stores.
  const double got3 = compress(part, three, x.data(), prev.data(), single(prev_scale), prev.data(), bits3.data());
  EXPECT_EQ(std::memcmp(prev.data(), want_c.data(), n * sizeof(float)), 0) << "in place";
  EXPECT_EQ(bits3, want_bits);
  EXPECT_EQ(got3, got1);
}

// §1: sign(-0.0) = +1, in the scalar head, the 16-wide middle and the tail of a piece.
TEST_P(Kernels, NegativeZeroHasSignPlusOne) {
  const size_t n = 100;
  const std::vector<size_t> bounds{0, 5, n};  // piece [5, 100): head 5..15, groups, tail 96..99
  const Partition part(n, bounds);
  ThreadPool pool(3);
  const std::vector<float> zeros(n, -0.0f), k{1.0f, 2.0f};
  std::vector<float> next(n, 1.0f), err(n);
  std::vector<uint8_t> bits((n + 7) / 8, 0);
  auto all_ones = [&] {
    for (size_t i = 0; i < n; ++i)
      if (!ref::get_bit(bits.data(), i)) return false;
    return true;
  };
  // With prev = -0 and scale 0 the error is -0 - 0 = -0, so c = -0 + -0 = -0 exactly.
  compress(part, pool, zeros.data(), zeros.data(), single(0.0f), next.data(), bits.data());
  for (size_t i = 0; i < n; ++i) ASSERT_TRUE(next[i] == 0.0f && std::signbit(next[i])) << i;
  EXPECT_TRUE(all_ones());
  materialize_error(part, next, single(0.5f), err);
  for (size_t i = 0; i < n; ++i) ASSERT_EQ(err[i], -0.5f) << "error of -0 at scale 0.5, element " << i;
  std::fill(bits.begin(), bits.end(), 0);
  compress_momentum(part, pool, {.values = zeros.data()}, zeros.data(), 0.9f, k.data(), zeros.data(), single(0.0f),
                    next.data(), bits.data());
  for (size_t i = 0; i < n; ++i) ASSERT_TRUE(next[i] == 0.0f && std::signbit(next[i])) << i;
  EXPECT_TRUE(all_ones());
  // Server: +s and -s cancel to +0, plus an error of -0: y is a zero, and a zero is +1.
  std::vector<uint8_t> workers(26, 0);  // worker 0 all +1, worker 1 all -1; 13 bytes each
  std::fill_n(workers.begin(), 13, 0xff);
  std::vector<float> f(n, -0.0f);
  const std::vector<float> scales{0.5f, 0.5f};
  std::fill(bits.begin(), bits.end(), 0);
  EXPECT_EQ(server_average(part, pool, workers.data(), 13, scales, 2, f.data(), single(0.0f), bits.data()), 0.0);
  for (size_t i = 0; i < n; ++i) ASSERT_EQ(f[i], 0.0f) << i;
  EXPECT_TRUE(all_ones());
}

// A NaN anywhere (scalar head, 16-wide middle, tail; any thread's block) makes the sum NaN, so the
// caller's finiteness check on the scale sees it.
TEST_P(Kernels, NanInputMakesSumNan) {
  const size_t n = 100003;
  const std::vector<size_t> bounds{0, 5, 70001, n};
  const Partition part(n, bounds);
  ThreadPool pool(3);
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal;
  std::vector<float> base(n), next(n), zeros(n, 0.0f), v(n, 1.0f);
  for (auto& x : base) x = normal(rng);
  std::vector<uint8_t> bits(n / 8 + 1, 0);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float k[] = {1.0f, 1.0f, 1.0f};
  for (size_t pos : {size_t{7}, size_t{1000}, size_t{70002}, n - 1}) {
    SCOPED_TRACE("NaN at element " + std::to_string(pos));
    const size_t layer = pos < 5 ? 0 : pos < 70001 ? 1 : 2;
    std::vector<float> x = base;
    x[pos] = nan;
    EXPECT_TRUE(std::isnan(compress(part, pool, x.data(), zeros.data(), single(0.0f), next.data(), bits.data())));
    EXPECT_TRUE(std::isnan(compress_momentum(part, pool, {.values = base.data()}, x.data(), 0.9f, k, zeros.data(),
                                             single(0.0f), next.data(), bits.data())));
    double sq[3], w_sq[3], u_sq[3];
    layer_sq_norms(part, pool, x.data(), sq);
    EXPECT_TRUE(std::isnan(sq[layer]));
    lamb_norms(part, pool, x.data(), base.data(), v.data(), base.data(), {}, w_sq, u_sq);
    EXPECT_TRUE(std::isnan(u_sq[layer]));
  }
  const std::vector<float> scales{1.0f, nan};
  std::vector<uint8_t> workers(2 * (n / 8 + 1), 0x5a);
  EXPECT_TRUE(std::isnan(server_average(part, pool, workers.data(), n / 8 + 1, scales, 2, zeros.data(),
                                        single(0.0f), bits.data())));
}

// Every ISA gives the generic code's bits, sums included: the design pins the reduction order.
using CrossIsa = IsaTest;
TEST_P(CrossIsa, BitwiseIdenticalToGeneric) {
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937_64 rng(seed);
  ThreadPool pool(3);
  const Runner runners[] = {run_compress<false>,     run_compress<true>,      run_compress<true, true>,
                            run_server,              run_decode,              run_lamb,
                            run_onebit_lamb<false>,  run_onebit_lamb<true>,   run_frozen_update<false>,
                            run_frozen_update<true>, run_decode_momentum,     run_layer_sq_norms,
                            run_divide};
  for (const Case& c : make_cases(rng)) {
    SCOPED_TRACE(c.describe());
    const Data d = make_data(c, rng);
    const Partition part(c.n, c.bounds, c.chunk);
    for (size_t r = 0; r < std::size(runners); ++r) {
      SCOPED_TRACE("runner #" + std::to_string(r));
      set_active_isa(Isa::kGeneric);
      const Out generic = runners[r]({c, part, d, &pool, {}});
      set_active_isa(GetParam());
      expect_same(runners[r]({c, part, d, &pool, {}}), generic,
                  std::string(isa_name(GetParam())) + " vs generic", true);
      if (HasFailure()) return;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllIsas, Kernels, ::testing::Values(Isa::kGeneric, Isa::kAvx2, Isa::kAvx512),
                         isa_param_name);
INSTANTIATE_TEST_SUITE_P(VectorIsas, CrossIsa, ::testing::Values(Isa::kAvx2, Isa::kAvx512), isa_param_name);

// The cut: pieces tile [0, n), each inside one block, one layer and one chunk, with correct indices.
TEST(Partition, PiecesTileTheBufferAtEveryBoundary) {
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937_64 rng(seed);
  for (const Case& c : make_cases(rng)) {
    SCOPED_TRACE(c.describe());
    const Partition part(c.n, c.bounds, c.chunk);
    const std::vector<size_t> b = ref::bounds_or_one(c.n, c.bounds);
    ASSERT_EQ(part.size(), c.n);
    ASSERT_EQ(part.num_layers(), c.layers());
    ASSERT_EQ(part.num_blocks(), (c.n + Partition::kBlock - 1) / Partition::kBlock);
    size_t at = 0, counted = 0;
    for (size_t blk = 0; blk < part.num_blocks(); ++blk)
      for (const Piece& p : part.block(blk)) {
        ++counted;
        ASSERT_EQ(p.begin, at);
        ASSERT_LT(p.begin, p.end);
        at = p.end;
        EXPECT_EQ(p.begin / Partition::kBlock, blk);
        EXPECT_LE(p.end, (blk + 1) * Partition::kBlock);
        EXPECT_LE(b[p.layer], p.begin);
        EXPECT_LE(p.end, b[p.layer + 1]);
        EXPECT_EQ(p.chunk, c.chunk ? p.begin / c.chunk : 0);
        if (c.chunk) {
          EXPECT_LE(p.end, (p.chunk + 1) * c.chunk);
        }
      }
    EXPECT_EQ(at, c.n);
    EXPECT_EQ(counted, part.pieces().size());
    for (size_t l = 0; l < c.layers(); ++l) EXPECT_EQ(part.layer_start(l), b[l]);
  }
}

TEST(ScaleFromSum, IsRootMeanSquareInFp32) {
  EXPECT_EQ(scale_from_sum(0.0, 0), 0.0f);
  EXPECT_EQ(scale_from_sum(5.0, 0), 0.0f);
  EXPECT_EQ(scale_from_sum(16.0, 4), 2.0f);
  EXPECT_EQ(scale_from_sum(2.0, 3), static_cast<float>(std::sqrt(2.0 / 3.0)));
}

}  // namespace
}  // namespace onebit::kernels
