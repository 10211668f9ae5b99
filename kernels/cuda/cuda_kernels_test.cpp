// Each CUDA kernel against its CPU twin on fresh random inputs of awkward sizes and layer layouts:
// element-wise outputs and sign bits bitwise, sums bitwise (the pinned order; the contract is 1e-12).
#include <algorithm>
#include <cmath>
#include <limits>

#include "launchers.hpp"
#include "onebit/cuda_kernels.hpp"
#include "onebit/kernels.hpp"
#include "test_util.hpp"

namespace onebit::cuda {
namespace {

using namespace test;

class CudaKernels : public ::testing::Test {
 protected:
  void SetUp() override { ONEBIT_REQUIRE_GPU(); }
  static size_t bit_bytes(size_t n) { return (n + 63) / 64 * 8 + 8; }  // whole words, and a tail
  // A chunk length that cuts most sizes into a few chunks (a multiple of 64, as in §2).
  static size_t chunk_for(size_t n) { return 64 * (n / 192 + 1); }
  ThreadPool pool_{3};
  StreamGuard stream_;
  const kernels::MomentParams p_{0.9f, 0.999f, 1e-8f, 0.01f};
};

template <class T>
DeviceArray<T> dev(const std::vector<T>& v) {
  return DeviceArray<T>(std::span<const T>(v));
}

// The CPU's scales of a compression from its piece sums: one over the buffer, or one per group.
std::vector<float> cpu_scales(const kernels::Partition& part, const std::vector<double>& piece_sums, size_t groups) {
  if (groups == 0) return {kernels::scale_from_sum(kernels::sum_pieces(piece_sums), part.size())};
  std::vector<double> sums(groups);
  kernels::sum_groups(part, piece_sums, sums);
  std::vector<size_t> size(groups);
  for (const auto& p : part.pieces()) size[p.group] += p.end - p.begin;
  std::vector<float> out(groups);
  for (size_t q = 0; q < groups; ++q) out[q] = kernels::scale_from_sum(sums[q], size[q]);
  return out;
}

// Momenta as the optimizers hand them over: plain values, or signs with per-group scales, k and
// masks on every third layer (0/1 values). Owns the host and device copies.
struct Momenta {
  std::vector<float> values, scales, k;
  std::vector<uint8_t> bits;
  std::vector<std::vector<float>> masks;
  std::vector<const float*> mask_ptrs, dmask_ptrs;
  std::vector<DeviceArray<float>> dmasks;
  DeviceArray<float> dvalues, dscales, dk;
  DeviceArray<uint8_t> dbits;
  DeviceArray<const float*> dptrs;

  Momenta(const kernels::Partition& part, size_t groups, uint64_t seed) {
    const size_t n = part.size(), L = part.num_layers();
    values = randn(n, seed, 0.1f);
    bits = random_bytes((n + 63) / 64 * 8 + 8, seed + 1);
    scales = randu(groups, seed + 2, 0.01f, 1.0f);
    k = randu(L, seed + 3, 0.5f, 3.0f);
    masks.resize(L);
    mask_ptrs.assign(L, nullptr);
    dmask_ptrs.assign(L, nullptr);
    dmasks.resize(L);
    for (size_t l = 0; l < L; l += 3) {
      const size_t len = (l + 1 < L ? part.layer_start(l + 1) : n) - part.layer_start(l);
      masks[l] = randu(len, seed + 100 + l, 0.0f, 1.0f);
      for (auto& x : masks[l]) x = x < 0.3f ? 0.0f : 1.0f;
      mask_ptrs[l] = masks[l].data();
      dmasks[l] = dev(masks[l]);
      dmask_ptrs[l] = dmasks[l].data();
    }
    dvalues = dev(values), dscales = dev(scales), dk = dev(k), dbits = dev(bits), dptrs = dev(dmask_ptrs);
  }
  kernels::Momentum host(bool signs) const {
    if (!signs) return {.values = values.data()};
    return {.bits = bits.data(), .scales = scales.data(), .k = k.data(), .masks = mask_ptrs.data()};
  }
  kernels::Momentum device(bool signs) const {
    if (!signs) return {.values = dvalues.data()};
    return {.bits = dbits.data(), .scales = dscales.data(), .k = dk.data(), .masks = dptrs.data()};
  }
};

// Scale groups of 128 elements per chunk (docs/algorithm.md §12), or none (0).
constexpr size_t kGroupLens[] = {0, 128};
size_t groups_of(const kernels::Partition& part) {
  size_t g = 1;
  for (const auto& p : part.pieces()) g = std::max<size_t>(g, p.group + 1);
  return g;
}

TEST_F(CudaKernels, CompressMatchesCpu) {
  for (size_t n : kSizes) {
    for (size_t group : kGroupLens) {
      SCOPED_TRACE(testing::Message() << n << " elements, groups of " << group);
      const kernels::Partition part(n, random_bounds(n, n + 11), chunk_for(n), group);
      const size_t G = group ? groups_of(part) : 0;
      const DevicePartition dpart(part, G);
      const auto x = randn(n, n + 1), prev = randn(n, n + 2, 0.5f);
      const std::vector<float> scale = randu(G ? G : 1, n + 3, 0.1f, 0.5f);
      std::vector<float> next(n);
      std::vector<uint8_t> bits(bit_bytes(n), 0xA5);  // bits past n must stay as they are
      std::vector<double> piece_sums(part.pieces().size());
      const double sum = kernels::compress(part, pool_, x.data(), prev.data(), scale, next.data(), bits.data(),
                                           piece_sums.data());

      auto dx = dev(x), dprev = dev(prev), dscale = dev(scale);
      DeviceArray<float> dnext(n), dout(G ? G : 1);
      auto dbits = dev(std::vector<uint8_t>(bit_bytes(n), 0xA5));
      DeviceArray<double> dsum(1);
      compress(dpart, dx.data(), dprev.data(), {dscale.data(), G > 0}, dnext.data(), dbits.data(),
               {dout.data(), G > 0, dsum.data()}, stream_.get());
      stream_.sync();
      EXPECT_TRUE(same_bits(next, dnext.download()));
      EXPECT_TRUE(same_bits(bits, dbits.download()));
      EXPECT_TRUE(same_sum(sum, dsum.download()[0]));
      EXPECT_TRUE(same_bits(cpu_scales(part, piece_sums, G), dout.download()));

      // In place (next == prev), as the compressed allreduce may use it.
      compress(dpart, dx.data(), dprev.data(), {dscale.data(), G > 0}, dprev.data(), dbits.data(), {}, stream_.get());
      stream_.sync();
      EXPECT_TRUE(same_bits(next, dprev.download()));
    }
  }
}

TEST_F(CudaKernels, CompressMomentumMatchesCpu) {
  for (size_t n : kSizes) {
    for (int form = 0; form < 3; ++form) {  // values with k, values with k = 1, signs (grouped) with k
      SCOPED_TRACE(testing::Message() << n << " elements, form " << form);
      const kernels::Partition part(n, random_bounds(n, n + 5), chunk_for(n), form == 2 ? 128 : 0);
      const DevicePartition dpart(part);
      const Momenta mo(part, groups_of(part), n + 1);
      const bool with_k = form != 1, signs = form == 2;
      const auto g = randn(n, n + 2), prev = randn(n, n + 3, 0.2f);
      const auto k = randu(part.num_layers(), n + 4, 0.25f, 4.0f);
      const std::vector<float> scale = {0.125f};
      std::vector<float> next(n);
      std::vector<uint8_t> bits(bit_bytes(n), 0x5A);
      const double sum = kernels::compress_momentum(part, pool_, mo.host(signs), g.data(), 0.9f,
                                                    with_k ? k.data() : nullptr, prev.data(), scale, next.data(),
                                                    bits.data());
      auto dg = dev(g), dprev = dev(prev), dk = dev(k), dscale = dev(scale);
      DeviceArray<float> dnext(n);
      auto dbits = dev(std::vector<uint8_t>(bit_bytes(n), 0x5A));
      DeviceArray<double> dsum(1);
      compress_momentum(dpart, mo.device(signs), dg.data(), 0.9f, with_k ? dk.data() : nullptr, dprev.data(),
                        {dscale.data(), false}, dnext.data(), dbits.data(), {nullptr, false, dsum.data()},
                        stream_.get());
      stream_.sync();
      EXPECT_TRUE(same_bits(next, dnext.download()));
      EXPECT_TRUE(same_bits(bits, dbits.download()));
      EXPECT_TRUE(same_sum(sum, dsum.download()[0]));
    }
  }
}

TEST_F(CudaKernels, ServerAverageMatchesCpu) {
  for (size_t n : kSizes) {
    for (size_t group : kGroupLens) {
      for (int world : {1, 2, 3, 5}) {
        SCOPED_TRACE(testing::Message() << n << " elements, groups of " << group << ", world " << world);
        const kernels::Partition part(n, {}, 0, group);
        const size_t G = groups_of(part), P = static_cast<size_t>(world);
        const DevicePartition dpart(part, G);
        const size_t stride = (n + 63) / 64 * 8;
        const auto wbits = random_bytes(stride * P + 1, n + P);
        // The CPU holds the scales [group][rank], the device [rank][group] (as they arrive).
        const auto scales = randu(G * P, n + 7, 0.01f, 2.0f);
        std::vector<float> dev_order(G * P);
        for (size_t q = 0; q < G; ++q)
          for (size_t p = 0; p < P; ++p) dev_order[p * G + q] = scales[q * P + p];
        const auto f0 = randn(n, n + 8, 0.3f);
        const std::vector<float> fs = randu(G, n + 9, 0.1f, 0.3f);
        std::vector<float> f = f0;
        std::vector<uint8_t> out(bit_bytes(n), 0x3C);
        std::vector<double> piece_sums(part.pieces().size());
        const double sum = kernels::server_average(part, pool_, wbits.data(), stride,
                                                   group ? std::span<const float>(scales) : std::span(scales).first(P),
                                                   world, f.data(), group ? std::span<const float>(fs) : std::span(fs).first(1),
                                                   out.data(), piece_sums.data());

        auto dw = dev(wbits);
        auto dscales = dev(dev_order), df = dev(f0), dfs = dev(fs);
        auto dout = dev(std::vector<uint8_t>(bit_bytes(n), 0x3C));
        DeviceArray<double> dsum(1);
        DeviceArray<float> dscale(G);
        DeviceArray<int> skip(1);
        skip.zero();
        const bool grouped = group > 0;
        server_average(dpart, dw.data(), stride, {dscales.data(), grouped}, world, df.data(), {dfs.data(), grouped},
                       dout.data(), {dscale.data(), grouped, dsum.data()}, stream_.get(), skip.data());
        stream_.sync();
        EXPECT_EQ(skip.download()[0], 0);
        EXPECT_TRUE(same_bits(f, df.download()));
        EXPECT_TRUE(same_bits(out, dout.download()));
        EXPECT_TRUE(same_sum(sum, dsum.download()[0]));
        auto want = cpu_scales(part, piece_sums, grouped ? G : 0), got = dscale.download();
        got.resize(want.size());
        EXPECT_TRUE(same_bits(want, got));

        // A non-finite worker scale: the flag is raised and nothing changes (per group, the
        // compressed allreduce checks finiteness itself).
        if (grouped) continue;
        auto bad = dev_order;
        bad[bad.size() - 1] = std::numeric_limits<float>::quiet_NaN();
        auto dbad = dev(bad), df2 = dev(f0);
        server_average(dpart, dw.data(), stride, {dbad.data(), grouped}, world, df2.data(), {dfs.data(), grouped},
                       dout.data(), {dscale.data(), grouped, dsum.data()}, stream_.get(), skip.data());
        stream_.sync();
        EXPECT_EQ(skip.download()[0], 1);
        EXPECT_TRUE(same_bits(f0, df2.download()));
      }
    }
  }
}

TEST_F(CudaKernels, DecodeAndRescaleMatchCpu) {
  for (size_t n : kSizes) {
    SCOPED_TRACE(n);
    const kernels::Partition part(n, random_bounds(n, n + 3), chunk_for(n), 128);
    const DevicePartition dpart(part);
    const Momenta mo(part, groups_of(part), n);
    std::vector<float> out(n), out_m(n);
    kernels::decode(part, pool_, mo.bits.data(), mo.scales.data(), out.data());
    kernels::decode_momentum(part, pool_, mo.host(true), out_m.data());
    DeviceArray<float> dout(n), dout_m(n);
    decode(dpart, mo.dbits.data(), mo.dscales.data(), dout.data(), stream_.get());
    decode_momentum(dpart, mo.device(true), dout_m.data(), stream_.get());
    // Tracked scales: the error, c - s*sign(c) per group, times k_new / k_old per layer.
    const auto c = randn(n, n + 5, 0.2f), k_new = randu(part.num_layers(), n + 6, 0.5f, 2.0f);
    std::vector<float> e(n);
    kernels::materialize_error(part, c, mo.scales, e);
    for (const auto& p : part.pieces())
      for (size_t i = p.begin; i < p.end; ++i) e[i] *= k_new[p.layer] / mo.k[p.layer];
    auto dc = dev(c), dk_new = dev(k_new);
    rescale_errors(dpart, dc.data(), {mo.dscales.data(), true}, dk_new.data(), mo.dk.data(), stream_.get());
    stream_.sync();
    EXPECT_TRUE(same_bits(out, dout.download()));
    EXPECT_TRUE(same_bits(out_m, dout_m.download()));
    EXPECT_TRUE(same_bits(e, dc.download()));
  }
}

TEST_F(CudaKernels, LambNormsAndUpdateMatchCpu) {
  for (size_t n : kSizes) {
    SCOPED_TRACE(n);
    const kernels::Partition part(n, random_bounds(n, n + 9));
    const DevicePartition dpart(part);
    const size_t L = part.num_layers();
    auto g = randn(n, n + 1), m = randn(n, n + 2, 0.1f), v = randu(n, n + 3, 0.0f, 0.01f), w = randn(n, n + 4);
    const auto coef = randu(L, n + 5, 1e-4f, 1e-2f);
    std::vector<double> w_sq(L), u_sq(L);
    kernels::lamb_norms(part, pool_, g.data(), m.data(), v.data(), w.data(), p_, w_sq.data(), u_sq.data());
    auto dg = dev(g), dm = dev(m), dv = dev(v), dw = dev(w), dcoef = dev(coef);
    DeviceArray<double> dw_sq(L), du_sq(L);
    lamb_norms(dpart, dg.data(), dm.data(), dv.data(), dw.data(), p_, dw_sq.data(), du_sq.data(), stream_.get());
    lamb_update(dpart, dg.data(), dm.data(), dv.data(), dw.data(), p_, dcoef.data(), stream_.get());
    stream_.sync();
    kernels::lamb_update(part, pool_, g.data(), m.data(), v.data(), w.data(), p_, coef.data());
    EXPECT_TRUE(same_bits(w_sq, dw_sq.download()));
    EXPECT_TRUE(same_bits(u_sq, du_sq.download()));
    EXPECT_TRUE(same_bits(m, dm.download()));
    EXPECT_TRUE(same_bits(v, dv.download()));
    EXPECT_TRUE(same_bits(w, dw.download()));
  }
}

TEST_F(CudaKernels, OnebitLambNormsMatchCpu) {
  for (size_t n : kSizes) {
    for (bool prev_signs : {false, true}) {
      SCOPED_TRACE(testing::Message() << n << (prev_signs ? ", m_prev in signs" : ", m_prev plain"));
      const kernels::Partition part(n, random_bounds(n, n + 2), chunk_for(n), 128);
      const DevicePartition dpart(part);
      const size_t L = part.num_layers();
      const Momenta m(part, groups_of(part), n + 1), prev(part, groups_of(part), n + 50);
      auto v_fresh = randu(n, n + 5, 0.0f, 0.01f), w = randn(n, n + 6);
      const auto v = randu(n, n + 7, 0.0f, 0.01f);
      auto dv = dev(v), dvf = dev(v_fresh), dw = dev(w);
      std::vector<double> w_sq(L), u_sq(L), u0_sq(L);
      std::vector<float> max_ratio(L), d(n);
      kernels::frozen_denominator(pool_, v, p_.eps, d);
      kernels::onebit_lamb_norms(part, pool_, m.host(true), prev.host(prev_signs), p_, d.data(), v_fresh.data(),
                                 w.data(), {w_sq.data(), u_sq.data(), u0_sq.data(), max_ratio.data()});
      DeviceArray<double> dw_sq(L), du_sq(L), du0_sq(L);
      DeviceArray<float> dmax(L);
      onebit_lamb_norms(dpart, m.device(true), prev.device(prev_signs), p_, dv.data(), dvf.data(), dw.data(),
                        {dw_sq.data(), du_sq.data(), du0_sq.data(), dmax.data()}, stream_.get());
      stream_.sync();
      EXPECT_TRUE(same_bits(v_fresh, dvf.download()));
      EXPECT_TRUE(same_bits(w_sq, dw_sq.download()));
      EXPECT_TRUE(same_bits(u_sq, du_sq.download()));
      EXPECT_TRUE(same_bits(u0_sq, du0_sq.download()));
      EXPECT_TRUE(same_bits(max_ratio, dmax.download()));
    }
  }
}

TEST_F(CudaKernels, FrozenUpdatesMatchCpu) {
  for (size_t n : kSizes) {
    for (bool signs : {false, true}) {
      SCOPED_TRACE(testing::Message() << n << (signs ? ", momentum in signs" : ", plain momentum"));
      const kernels::Partition part(n, random_bounds(n, n + 4), chunk_for(n), 128);
      const DevicePartition dpart(part);
      const size_t L = part.num_layers();
      const Momenta m(part, groups_of(part), n + 1);
      const auto coef = randu(L, n + 3, 1e-4f, 1e-2f);
      auto w = randn(n, n + 5);
      const auto v = randu(n, n + 6, 0.0f, 0.01f);
      auto dv = dev(v), dw = dev(w), dw2 = dev(w), dcoef = dev(coef);
      std::vector<float> d(n);
      kernels::frozen_denominator(pool_, v, 1e-8f, d);
      // The refresh's norms of w and u = m/d + wd*w, before the update.
      std::vector<double> w_sq(L), u_sq(L);
      std::vector<float> u(n);
      for (size_t i = 0; i < n; ++i) u[i] = m.values[i] / d[i] + 0.01f * w[i];
      kernels::layer_sq_norms(part, pool_, w.data(), w_sq.data());
      kernels::layer_sq_norms(part, pool_, u.data(), u_sq.data());
      kernels::frozen_update(part, pool_, m.host(signs), d.data(), w.data(), 0.01f, coef.data());
      DeviceArray<double> dw_sq(L), du_sq(L);
      frozen_norms(dpart, m.dvalues.data(), dv.data(), dw2.data(), 1e-8f, 0.01f, dw_sq.data(), du_sq.data(),
                   stream_.get());
      frozen_update(dpart, m.device(signs), dv.data(), dw.data(), 1e-8f, 0.01f, dcoef.data(), stream_.get());
      stream_.sync();
      EXPECT_TRUE(same_bits(w, dw.download()));
      EXPECT_TRUE(same_bits(w_sq, dw_sq.download()));
      EXPECT_TRUE(same_bits(u_sq, du_sq.download()));
    }
  }
}

TEST_F(CudaKernels, LayerNormsDivideCopyMatchCpu) {
  for (size_t n : kSizes) {
    SCOPED_TRACE(n);
    const kernels::Partition part(n, random_bounds(n, n + 6));
    const DevicePartition dpart(part);
    auto x = randn(n, n + 1);
    std::vector<double> sq(part.num_layers());
    kernels::layer_sq_norms(part, pool_, x.data(), sq.data());
    auto dx = dev(x);
    DeviceArray<double> dsq(part.num_layers());
    DeviceArray<float> dcopy(n);
    layer_sq_norms(dpart, dx.data(), dsq.data(), stream_.get());
    divide(dx.data(), n, 3.0f, stream_.get());
    copy(dcopy.data(), dx.data(), n, stream_.get());
    stream_.sync();
    kernels::divide(pool_, x, 3.0f);
    EXPECT_TRUE(same_bits(sq, dsq.download()));
    EXPECT_TRUE(same_bits(x, dx.download()));
    EXPECT_TRUE(same_bits(x, dcopy.download()));
  }
}

// The per-layer scalar kernels against optim/'s expressions, written out again here.
TEST_F(CudaKernels, LambCoefficientsMatchTheOptimizerMath) {
  const size_t L = 300;
  auto w_sq = std::vector<double>(L), u_sq = std::vector<double>(L);
  const auto a = randu(L, 1, 0.0f, 4.0f), b = randu(L, 2, 0.0f, 4.0f);
  for (size_t l = 0; l < L; ++l) {
    w_sq[l] = l % 17 == 0 ? 0.0 : a[l] * a[l] * 1e3;
    u_sq[l] = l % 19 == 0 ? 0.0 : b[l] * b[l];
  }
  const auto c0 = randu(L, 3, 0.0f, 2.0f);
  const float lr = 1e-3f, min_c = 0.01f, max_c = 10.0f, cb = 0.9f;
  std::vector<float> coef(L), cf = c0;
  for (size_t l = 0; l < L; ++l) {
    const double r = w_sq[l] > 0 && u_sq[l] > 0
                         ? std::clamp(std::sqrt(w_sq[l]) / std::sqrt(u_sq[l]), double{min_c}, double{max_c})
                         : 1.0;
    coef[l] = lr * static_cast<float>(r);
    if (r != 1.0) cf[l] = static_cast<float>(cb * cf[l] + (1 - cb) * r);
  }
  auto dw = dev(w_sq), du = dev(u_sq);
  auto dcf = dev(c0);
  DeviceArray<float> dcoef(L);
  DeviceArray<int> skip(1);
  skip.zero();
  lamb_coefficients({dw.data(), du.data(), L, lr, min_c, max_c, true, dcoef.data(), dcf.data(), cb}, skip.data(),
                    stream_.get());
  stream_.sync();
  EXPECT_EQ(skip.download()[0], 0);
  EXPECT_TRUE(same_bits(coef, dcoef.download()));
  EXPECT_TRUE(same_bits(cf, dcf.download()));

  // One non-finite layer: the flag is raised and no layer changes.
  w_sq[L / 2] = std::numeric_limits<double>::infinity();
  auto dbad = dev(w_sq);
  auto dcf2 = dev(c0);
  lamb_coefficients({dbad.data(), du.data(), L, lr, min_c, max_c, true, dcoef.data(), dcf2.data(), cb},
                    skip.data(), stream_.get());
  stream_.sync();
  EXPECT_EQ(skip.download()[0], 1);
  EXPECT_TRUE(same_bits(c0, dcf2.download()));
}

TEST_F(CudaKernels, OnebitCoefficientsAndMomentumScalesMatchTheOptimizerMath) {
  const size_t L = 300;
  const auto a = randu(L, 1, 0.0f, 3.0f), b = randu(L, 2, 0.1f, 3.0f), c = randu(L, 3, 0.0f, 3.0f);
  std::vector<double> w_sq(L), u_sq(L), u0_sq(L);
  for (size_t l = 0; l < L; ++l) {
    w_sq[l] = a[l];
    u_sq[l] = l % 13 == 0 ? 0.0 : b[l];
    u0_sq[l] = c[l];
  }
  const auto max_ratio = randu(L, 4, 0.2f, 6.0f), last0 = randu(L, 5, 0.5f, 4.0f), cf = randu(L, 6, 0.0f, 2.0f);
  const float lr = 2e-3f, wd = 0.01f, fmin = 0.5f, fmax = 4.0f, ft = 0.1f;
  std::vector<float> last = last0, coef(L);
  for (size_t l = 0; l < L; ++l) {  // optim/onebit_lamb.cpp, step 8
    double f = max_ratio[l];
    if (wd > 0 && u_sq[l] > 0) {
      const double rho = std::min(1.0, std::sqrt(u0_sq[l]) / std::sqrt(u_sq[l]));
      f = rho * f + (1 - rho);
    }
    f = std::clamp(f, static_cast<double>(fmin), static_cast<double>(fmax));
    const double prev = last[l];
    f = std::clamp(f, prev * (1 - ft), prev * (1 + ft));
    last[l] = static_cast<float>(f);
    coef[l] = lr * (cf[l] * last[l]);
  }
  auto dw = dev(w_sq), du = dev(u_sq), du0 = dev(u0_sq);
  auto dmax = dev(max_ratio), dlast = dev(last0), dcf = dev(cf);
  DeviceArray<float> dcoef(L);
  onebit_lamb_coefficients({{dw.data(), du.data(), du0.data(), dmax.data()}, L, lr, wd, fmin, fmax, ft, dcf.data(),
                            dlast.data(), dcoef.data(), false},
                           stream_.get());

  // k from per-layer ||m||^2 (optim/onebit_lamb.cpp, init_momentum_scale), empty layers included.
  const std::vector<size_t> bounds = {0, 10, 10, 1000, 1001, 5000};
  const kernels::Partition part(5000, bounds);
  const DevicePartition dpart(part);
  const std::vector<double> m_sq = {4.0, 0.0, 17.5, 0.0, 1234.5};
  std::vector<double> s(5);
  double mean = 0;
  for (size_t l = 0; l < 5; ++l) {
    const size_t len = bounds[l + 1] - bounds[l];
    s[l] = len ? std::sqrt(m_sq[l] / static_cast<double>(len)) : 0.0;
    mean += s[l] / 5.0;
  }
  std::vector<float> k(5);
  for (size_t l = 0; l < 5; ++l) k[l] = s[l] > 0 ? static_cast<float>(mean / s[l]) : 1.0f;
  auto dm_sq = dev(m_sq);
  DeviceArray<float> dk(5);
  momentum_scales(dpart, dm_sq.data(), dk.data(), stream_.get());
  stream_.sync();
  EXPECT_TRUE(same_bits(last, dlast.download()));
  EXPECT_TRUE(same_bits(coef, dcoef.download()));
  EXPECT_TRUE(same_bits(k, dk.download()));
}

}  // namespace
}  // namespace onebit::cuda
