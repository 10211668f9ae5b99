// Float64 1-bit LAMB and 1-bit Adam written straight from docs/algorithm.md (§2-§5), all ranks simulated in
// one object: the yardstick for the fp32 optimizers' trajectories.
#pragma once
#include <algorithm>
#include <cmath>
#include <vector>

namespace onebit::testing {

using DVec = std::vector<double>;

struct RefOptions {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0;
  double max_coeff = 10, min_coeff = 0.01;
  double coeff_beta = 0.9, factor_max = 4, factor_min = 0.5, factor_threshold = 0.1;
  long freeze_step = 1;
  bool adam = false;  // 1-bit Adam instead of 1-bit LAMB
};

class RefOptimizer {
 public:
  RefOptimizer(std::vector<size_t> layer_sizes, int world, RefOptions o, DVec w0)
      : w(std::move(w0)), sizes(std::move(layer_sizes)), P(world), o(o) {
    for (size_t s : sizes) {
      offsets.push_back(N);
      N += s;
    }
    m.assign(N, 0);
    v.assign(N, 0);
    vf.assign(N, 0);
    mask.assign(N, 1);
    c_freeze.assign(sizes.size(), 0);
    last.assign(sizes.size(), 1);
    const size_t unit = 64 * static_cast<size_t>(P);
    chunk = (N + unit - 1) / unit * unit / static_cast<size_t>(P);
    werr.assign(static_cast<size_t>(P), DVec(N, 0));
    serr.assign(static_cast<size_t>(P), DVec(chunk, 0));
  }

  void step(const std::vector<DVec>& g) {
    ++t;
    if (t <= o.freeze_step) warmup(g);
    else compression(g);
  }

  DVec w, m, v, vf, mask, c_freeze, last, k;

 private:
  static double sgn(double x) { return x >= 0 ? 1 : -1; }
  double norm(const DVec& x, size_t b, size_t n) const {
    double s = 0;
    for (size_t i = b; i < b + n; ++i) s += x[i] * x[i];
    return std::sqrt(s);
  }

  void warmup(const std::vector<DVec>& g) {
    DVec avg(N, 0), u(N);
    for (int p = 0; p < P; ++p)
      for (size_t i = 0; i < N; ++i) avg[i] += g[p][i] / P;
    for (size_t i = 0; i < N; ++i) {
      m[i] = o.beta1 * m[i] + (1 - o.beta1) * avg[i];
      v[i] = o.beta2 * v[i] + (1 - o.beta2) * avg[i] * avg[i];
      u[i] = m[i] / (std::sqrt(v[i]) + o.eps) + o.weight_decay * w[i];
    }
    for (size_t l = 0; l < sizes.size(); ++l) {
      double r = 1;
      if (!o.adam) {
        const double wn = norm(w, offsets[l], sizes[l]), un = norm(u, offsets[l], sizes[l]);
        if (wn > 0 && un > 0) r = std::clamp(wn / un, o.min_coeff, o.max_coeff);
        if (r != 1) c_freeze[l] = o.coeff_beta * c_freeze[l] + (1 - o.coeff_beta) * r;
      }
      for (size_t i = offsets[l]; i < offsets[l] + sizes[l]; ++i) w[i] -= o.lr * r * u[i];
    }
    if (t == o.freeze_step) vf = v;
  }

  // docs/algorithm.md §2 over all ranks' inputs.
  DVec allreduce(const std::vector<DVec>& x) {
    std::vector<DVec> q(static_cast<size_t>(P), DVec(N));
    for (int p = 0; p < P; ++p) {
      DVec c(N);
      for (size_t i = 0; i < N; ++i) c[i] = x[p][i] + werr[p][i];
      const double s = N ? norm(c, 0, N) / std::sqrt(static_cast<double>(N)) : 0;
      for (size_t i = 0; i < N; ++i) {
        q[p][i] = s * sgn(c[i]);
        werr[p][i] = c[i] - q[p][i];
      }
    }
    DVec out(N);
    for (int j = 0; j < P; ++j) {
      const size_t b = std::min(N, j * chunk), e = std::min(N, (j + 1) * chunk);
      DVec y(e - b);
      for (size_t i = b; i < e; ++i) {
        double sum = 0;
        for (int p = 0; p < P; ++p) sum += q[p][i];
        y[i - b] = sum / P + serr[j][i - b];
      }
      const double s = y.empty() ? 0 : norm(y, 0, y.size()) / std::sqrt(static_cast<double>(y.size()));
      for (size_t i = b; i < e; ++i) {
        out[i] = s * sgn(y[i - b]);
        serr[j][i - b] = y[i - b] - out[i];
      }
    }
    return out;
  }

  void compression(const std::vector<DVec>& g) {
    const size_t L = sizes.size();
    if (!o.adam && k.empty()) {
      DVec s(L);
      double mean = 0;
      for (size_t l = 0; l < L; ++l) {
        s[l] = norm(m, offsets[l], sizes[l]) / std::sqrt(static_cast<double>(sizes[l]));
        mean += s[l] / L;
      }
      for (size_t l = 0; l < L; ++l) k.push_back(s[l] > 0 ? mean / s[l] : 1);
    }
    const DVec m_prev = m;
    std::vector<DVec> local(static_cast<size_t>(P), DVec(N));
    for (int p = 0; p < P; ++p)
      for (size_t l = 0; l < L; ++l)
        for (size_t i = offsets[l]; i < offsets[l] + sizes[l]; ++i)
          local[p][i] = (o.beta1 * m[i] + (1 - o.beta1) * g[p][i]) * (o.adam ? 1 : k[l]);
    m = allreduce(local);
    for (size_t l = 0; l < L; ++l) {
      DVec u(sizes[l]), u0(sizes[l]);
      double f = 0;
      for (size_t j = 0; j < sizes[l]; ++j) {
        const size_t i = offsets[l] + j;
        if (!o.adam) m[i] = m[i] / k[l] * mask[i];
        const double gt = (m[i] - o.beta1 * m_prev[i]) / (1 - o.beta1);
        vf[i] = o.beta2 * vf[i] + (1 - o.beta2) * gt * gt;
        const double d = std::sqrt(v[i]) + o.eps;
        u0[j] = m[i] / d;
        u[j] = u0[j] + o.weight_decay * w[i];
        f = std::max(f, d / (std::sqrt(vf[i]) + o.eps));
      }
      double coef = o.lr;
      if (!o.adam) {
        if (o.weight_decay > 0) {
          const double rho = std::min(1.0, norm(u0, 0, u0.size()) / norm(u, 0, u.size()));
          f = rho * f + (1 - rho);
        }
        f = std::clamp(f, o.factor_min, o.factor_max);
        f = std::clamp(f, last[l] * (1 - o.factor_threshold), last[l] * (1 + o.factor_threshold));
        last[l] = f;
        coef = o.lr * c_freeze[l] * f;
      }
      for (size_t j = 0; j < sizes[l]; ++j) w[offsets[l] + j] -= coef * u[j];
    }
  }

  std::vector<size_t> sizes, offsets;
  int P;
  RefOptions o;
  size_t N = 0, chunk = 0;
  long t = 0;
  std::vector<DVec> werr, serr;
};

}  // namespace onebit::testing
