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

// Scale groups of 128 elements per chunk (docs/algorithm.md §12), or none (0).
constexpr size_t kGroupLens[] = {0, 128};

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

}  // namespace
}  // namespace onebit::cuda
