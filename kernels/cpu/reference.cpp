// The scalar reference of reference.hpp: each formula of docs/algorithm.md as one plain loop, nothing fused,
// nothing vectorized by hand, so that a reader can check it against docs/algorithm.md line by line.
#include "reference.hpp"

#include <cmath>

namespace onebit::kernels::ref {
namespace {

double sq(float x) { return static_cast<double>(x) * static_cast<double>(x); }

}  // namespace

void set_bit(uint8_t* bits, size_t i, bool b) {
  const auto mask = static_cast<uint8_t>(1u << (i % 8));
  if (b)
    bits[i / 8] = static_cast<uint8_t>(bits[i / 8] | mask);
  else
    bits[i / 8] = static_cast<uint8_t>(bits[i / 8] & ~mask);
}

std::vector<size_t> bounds_or_one(size_t n, std::span<const size_t> bounds) {
  if (bounds.empty()) return {0, n};
  return {bounds.begin(), bounds.end()};
}

double compress(size_t n, const float* x, const float* e, float* c, uint8_t* bits) {
  double sum = 0;
  for (size_t i = 0; i < n; ++i) {
    c[i] = x[i] + e[i];
    set_bit(bits, i, sign(c[i]) > 0.0f);
    sum += sq(c[i]);
  }
  return sum;
}

double compress_momentum(size_t n, std::span<const size_t> bounds, const float* m, const float* g,
                         float beta1, const float* k, const float* e, float* c, uint8_t* bits) {
  const std::vector<size_t> b = bounds_or_one(n, bounds);
  const float one_minus_beta1 = 1.0f - beta1;
  std::vector<float> x(n);
  for (size_t l = 0; l + 1 < b.size(); ++l) {
    const float kl = k ? k[l] : 1.0f;
    for (size_t i = b[l]; i < b[l + 1]; ++i) x[i] = (beta1 * m[i] + one_minus_beta1 * g[i]) * kl;
  }
  return compress(n, x.data(), e, c, bits);
}

void update_error(size_t n, const float* c, float s, float* e) {
  for (size_t i = 0; i < n; ++i) e[i] = c[i] - s * sign(c[i]);
}

double server_average(size_t n, const uint8_t* worker_bits, size_t stride,
                      std::span<const float> worker_scales, const float* f, float* y,
                      uint8_t* out_bits) {
  const auto world = static_cast<float>(worker_scales.size());
  double sum_sq = 0;
  for (size_t i = 0; i < n; ++i) {
    float sum = 0.0f;
    for (size_t p = 0; p < worker_scales.size(); ++p) {
      const float sign_p = get_bit(worker_bits + p * stride, i) ? 1.0f : -1.0f;
      sum = sum + worker_scales[p] * sign_p;
    }
    y[i] = sum / world + f[i];
    set_bit(out_bits, i, sign(y[i]) > 0.0f);
    sum_sq += sq(y[i]);
  }
  return sum_sq;
}

void decode(size_t n, size_t chunk_len, const uint8_t* bits, const float* chunk_scales, float* out) {
  for (size_t i = 0; i < n; ++i) {
    const size_t chunk = chunk_len ? i / chunk_len : 0;
    out[i] = chunk_scales[chunk] * (get_bit(bits, i) ? 1.0f : -1.0f);
  }
}

void lamb_norms(size_t n, std::span<const size_t> bounds, const float* g, const float* m,
                const float* v, const float* w, const MomentParams& p, double* w_sq, double* u_sq) {
  const std::vector<size_t> b = bounds_or_one(n, bounds);
  for (size_t l = 0; l + 1 < b.size(); ++l) {
    w_sq[l] = 0;
    u_sq[l] = 0;
    for (size_t i = b[l]; i < b[l + 1]; ++i) {
      const float m1 = p.beta1 * m[i] + (1.0f - p.beta1) * g[i];
      const float v1 = p.beta2 * v[i] + (1.0f - p.beta2) * (g[i] * g[i]);
      const float u = m1 / (std::sqrt(v1) + p.eps) + p.weight_decay * w[i];
      w_sq[l] += sq(w[i]);
      u_sq[l] += sq(u);
    }
  }
}

void lamb_update(size_t n, std::span<const size_t> bounds, const float* g, float* m, float* v,
                 float* w, const MomentParams& p, const float* coef) {
  const std::vector<size_t> b = bounds_or_one(n, bounds);
  for (size_t l = 0; l + 1 < b.size(); ++l) {
    for (size_t i = b[l]; i < b[l + 1]; ++i) {
      m[i] = p.beta1 * m[i] + (1.0f - p.beta1) * g[i];
      v[i] = p.beta2 * v[i] + (1.0f - p.beta2) * (g[i] * g[i]);
      const float u = m[i] / (std::sqrt(v[i]) + p.eps) + p.weight_decay * w[i];
      w[i] = w[i] - coef[l] * u;
    }
  }
}

void decode_momentum(size_t n, std::span<const size_t> bounds, size_t chunk_len, const uint8_t* bits,
                     const float* chunk_scales, const float* k, const float* const* masks, float* m) {
  const std::vector<size_t> b = bounds_or_one(n, bounds);
  std::vector<float> decoded(n);
  decode(n, chunk_len, bits, chunk_scales, decoded.data());
  for (size_t l = 0; l + 1 < b.size(); ++l) {
    const float* mask = masks ? masks[l] : nullptr;
    for (size_t i = b[l]; i < b[l + 1]; ++i) {
      m[i] = decoded[i] / (k ? k[l] : 1.0f);
      if (mask) m[i] = m[i] * mask[i - b[l]];
    }
  }
}

void onebit_lamb_norms(size_t n, std::span<const size_t> bounds, const float* m, const float* m_prev,
                       const MomentParams& p, const float* v, float* v_fresh, const float* w,
                       const OnebitLambSums& out) {
  const std::vector<size_t> b = bounds_or_one(n, bounds);
  for (size_t l = 0; l + 1 < b.size(); ++l) {
    out.w_sq[l] = 0;
    out.u_sq[l] = 0;
    out.u0_sq[l] = 0;
    out.max_ratio[l] = 0.0f;
    for (size_t i = b[l]; i < b[l + 1]; ++i) {
      const float g_tilde = (m[i] - p.beta1 * m_prev[i]) / (1.0f - p.beta1);  // step 6
      v_fresh[i] = p.beta2 * v_fresh[i] + (1.0f - p.beta2) * (g_tilde * g_tilde);
      const float d = std::sqrt(v[i]) + p.eps;  // step 7
      const float u0 = m[i] / d;
      const float u = u0 + p.weight_decay * w[i];
      const float ratio = d / (std::sqrt(v_fresh[i]) + p.eps);  // step 8
      out.w_sq[l] += sq(w[i]);
      out.u_sq[l] += sq(u);
      out.u0_sq[l] += sq(u0);
      if (ratio > out.max_ratio[l]) out.max_ratio[l] = ratio;
    }
  }
}

void frozen_update(size_t n, std::span<const size_t> bounds, const float* m, const float* v,
                   float* w, float eps, float weight_decay, const float* coef) {
  const std::vector<size_t> b = bounds_or_one(n, bounds);
  for (size_t l = 0; l + 1 < b.size(); ++l)
    for (size_t i = b[l]; i < b[l + 1]; ++i) {
      const float u = m[i] / (std::sqrt(v[i]) + eps) + weight_decay * w[i];
      w[i] = w[i] - coef[l] * u;
    }
}

void layer_sq_norms(size_t n, std::span<const size_t> bounds, const float* x, double* out) {
  const std::vector<size_t> b = bounds_or_one(n, bounds);
  for (size_t l = 0; l + 1 < b.size(); ++l) {
    out[l] = 0;
    for (size_t i = b[l]; i < b[l + 1]; ++i) out[l] += sq(x[i]);
  }
}

}  // namespace onebit::kernels::ref
