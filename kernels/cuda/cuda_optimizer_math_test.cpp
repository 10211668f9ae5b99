// The optimizers' device passes that only onebit's own optimizers run (kernels/cuda/launchers.hpp):
// the per-layer scalar math and the refresh's and tracked scales' passes, against optim/'s
// expressions written out again here, bit for bit.
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

class CudaOptimizerMath : public ::testing::Test {
 protected:
  void SetUp() override { ONEBIT_REQUIRE_GPU(); }
  ThreadPool pool_{2};
  StreamGuard stream_;
};

// The per-layer scalar kernels against optim/'s expressions, written out again here.
TEST_F(CudaOptimizerMath, LambCoefficientsMatchTheOptimizerMath) {
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

TEST_F(CudaOptimizerMath, OnebitCoefficientsAndMomentumScalesMatchTheOptimizerMath) {
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

// optim/onebit_lamb.cpp's track_scales after its all-reduce: sum / world in float, then over the
// layer's size in double; g_rms smoothed with beta1 (taken as is the first time); k = mean / g_rms.
TEST_F(CudaOptimizerMath, TrackedScalesMatchTheOptimizerMath) {
  const std::vector<size_t> bounds = {0, 10, 1000, 1001, 5000};
  const kernels::Partition part(5000, bounds);
  const DevicePartition dpart(part);
  const size_t L = 4;
  const int world = 3;
  const float beta1 = 0.9f;
  const auto a = randu(L, 1, 0.0f, 50.0f);
  const std::vector<double> sq(a.begin(), a.end());
  const std::vector<float> rms0 = {0.0f, 0.5f, 0.0f, 1.25f};
  std::vector<float> sum(sq.begin(), sq.end()), rms = rms0, k(L);
  double mean = 0;
  for (size_t l = 0; l < L; ++l) {
    const float r = static_cast<float>(std::sqrt(sum[l] / world / static_cast<double>(bounds[l + 1] - bounds[l])));
    rms[l] = rms[l] == 0 ? r : beta1 * rms[l] + (1 - beta1) * r;
    mean += rms[l] / static_cast<double>(L);
  }
  for (size_t l = 0; l < L; ++l) k[l] = rms[l] > 0 ? static_cast<float>(mean / rms[l]) : 1.0f;
  auto dsq = dev(sq);
  auto drms = dev(rms0);
  DeviceArray<float> dsum(L), dk(L);
  DeviceArray<int> skip(1);
  skip.zero();
  to_float(dsq.data(), dsum.data(), L, stream_.get());
  track_scales(dpart, dsum.data(), world, beta1, drms.data(), dk.data(), skip.data(), stream_.get());
  stream_.sync();
  EXPECT_EQ(skip.download()[0], 0);
  EXPECT_TRUE(same_bits(sum, dsum.download()));
  EXPECT_TRUE(same_bits(rms, drms.download()));
  EXPECT_TRUE(same_bits(k, dk.download()));

  // A non-finite sum: the flag is raised and nothing changes.
  sum[2] = std::numeric_limits<float>::infinity();
  auto dbad = dev(sum), drms2 = dev(rms0);
  track_scales(dpart, dbad.data(), world, beta1, drms2.data(), dk.data(), skip.data(), stream_.get());
  stream_.sync();
  EXPECT_EQ(skip.download()[0], 1);
  EXPECT_TRUE(same_bits(rms0, drms2.download()));
  EXPECT_TRUE(same_bits(k, dk.download()));
}

// optim/onebit_lamb.cpp's refresh_step: the trust ratios measured afresh; and the compression step's
// coefficients with refreshes, where the factor is held.
TEST_F(CudaOptimizerMath, RefreshAndHeldCoefficientsMatchTheOptimizerMath) {
  const size_t L = 300;
  const auto a = randu(L, 1, 0.0f, 3.0f), b = randu(L, 2, 0.0f, 3.0f), cf0 = randu(L, 3, 0.1f, 2.0f);
  std::vector<double> w_sq(L), u_sq(L);
  for (size_t l = 0; l < L; ++l) {
    w_sq[l] = l % 11 == 0 ? 0.0 : a[l] * 100.0;
    u_sq[l] = l % 13 == 0 ? 0.0 : b[l];
  }
  const float lr = 2e-3f, min_c = 0.01f, max_c = 10.0f;
  std::vector<float> cf(L), last(L, 1.0f), coef(L), held(L);
  for (size_t l = 0; l < L; ++l) {
    const double r = w_sq[l] > 0 && u_sq[l] > 0
                         ? std::clamp(std::sqrt(w_sq[l]) / std::sqrt(u_sq[l]), double{min_c}, double{max_c})
                         : 1.0;
    cf[l] = static_cast<float>(r);
    coef[l] = lr * cf[l];
    held[l] = lr * cf0[l];
  }
  auto dw = dev(w_sq), du = dev(u_sq);
  auto dcf = dev(cf0), dcf0 = dev(cf0), dlast = dev(randu(L, 4, 0.5f, 2.0f));
  const auto last0 = dlast.download();
  DeviceArray<float> dcoef(L), dheld(L), dmax(L);
  refresh_coefficients({dw.data(), du.data(), L, lr, min_c, max_c, dcf.data(), dlast.data(), dcoef.data()},
                       stream_.get(), nullptr);
  stream_.sync();
  EXPECT_TRUE(same_bits(cf, dcf.download()));
  EXPECT_TRUE(same_bits(last, dlast.download()));
  EXPECT_TRUE(same_bits(coef, dcoef.download()));
  auto dlast2 = dev(last0);
  onebit_lamb_coefficients({{dw.data(), du.data(), du.data(), dmax.data()}, L, lr, 0.01f, 0.5f, 4.0f, 0.1f,
                            dcf0.data(), dlast2.data(), dheld.data(), true},
                           stream_.get());
  stream_.sync();
  EXPECT_TRUE(same_bits(held, dheld.download()));
  EXPECT_TRUE(same_bits(last0, dlast2.download()));
}

// optim/onebit_lamb.cpp's refresh_step before its exchange, on rank 1 of 3 with scale groups: the
// momentum in signs, the worker error everywhere and 3 times the server error on the rank's chunk,
// over k; then the masks.
TEST_F(CudaOptimizerMath, RefreshMomentumAndMasksMatchTheOptimizerMath) {
  const size_t n = 100003, P = 3, group = 128;
  const int rank = 1;
  const size_t unit = 64 * P, C = (n + unit - 1) / unit * unit / P, chunk0 = rank * C;
  const kernels::Partition part(n, random_bounds(n, 7), C, group);
  const size_t G = part.groups_per_chunk();
  const DevicePartition dpart(part, P * G);
  const size_t server_real = std::min(n, chunk0 + C) - chunk0;
  const kernels::Partition server(server_real, {}, 0, group);
  const Momenta m(part, P * G, 9);
  const float beta1 = 0.9f;
  const auto g = randn(n, 10), wc = randn(n, 11, 0.1f), ws = randu(P * G, 12, 0.01f, 0.2f);
  const auto sc = randn(server_real, 13, 0.1f), ss = randu(G, 14, 0.01f, 0.2f);
  std::vector<float> x(n), we(n), se(server_real);
  kernels::decode_momentum(part, pool_, m.host(true), x.data());
  kernels::materialize_error(part, wc, ws, we);
  kernels::materialize_error(server, sc, ss, se);
  for (size_t l = 0; l < part.num_layers(); ++l) {
    const float inv_k = 1.0f / m.k[l];
    const size_t end = l + 1 < part.num_layers() ? part.layer_start(l + 1) : n;
    for (size_t i = part.layer_start(l); i < end; ++i) {
      float e = we[i];
      if (i >= chunk0 && i - chunk0 < se.size()) e += static_cast<float>(P) * se[i - chunk0];
      x[i] = beta1 * x[i] + (1 - beta1) * g[i] + e * inv_k;
    }
  }
  auto dg = dev(g), dwc = dev(wc), dws = dev(ws), dsc = dev(sc), dss = dev(ss);
  DeviceArray<float> dx(n);
  refresh_momentum(dpart, {m.device(true), dg.data(), beta1, m.dk.data(), dwc.data(), {dws.data(), true}, dsc.data(),
                           {dss.data(), true}, G, rank, static_cast<int>(P), dx.data()},
                   stream_.get(), nullptr);
  stream_.sync();
  EXPECT_TRUE(same_bits(x, dx.download()));

  for (size_t l = 0; l < part.num_layers(); ++l)
    if (m.mask_ptrs[l])
      for (size_t i = 0; i < m.masks[l].size(); ++i) x[part.layer_start(l) + i] *= m.masks[l][i];
  apply_masks(dpart, dx.data(), m.dptrs.data(), stream_.get(), nullptr);
  stream_.sync();
  EXPECT_TRUE(same_bits(x, dx.download()));
}

}  // namespace
}  // namespace onebit::cuda
