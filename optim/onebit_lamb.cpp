// 1-bit LAMB (docs/algorithm.md §4): LAMB warmup that records the trust ratios, then compressed-momentum
// steps whose per-layer learning rate is the frozen ratio times a factor tracking the variance change.
// Past the paper, on with freeze_step = auto (§10): refresh steps and tracked scales.
#include <algorithm>
#include <cmath>

#include "onebit/error.hpp"
#include "onebit/optimizers.hpp"
#include "options.hpp"

namespace onebit {

OnebitLamb::OnebitLamb(const FlatLayout& layout, Communicator& comm, OnebitLambOptions options)
    : CpuOptimizer(layout, comm, options.threads, options.warmup_exchange),
      opt_(settled(options, "onebit-lamb")),
      freeze_(opt_.freeze_step, opt_.auto_freeze, layout),
      allreduce_(comm, pool_, layout.total(), layout.boundaries(), static_cast<size_t>(opt_.scale_group)) {
  agree_across_ranks(comm, layout, settings_of(opt_), name());
  const size_t N = layout.total(), L = layout.num_layers();
  m_.assign(N, 0.0f);
  v_.assign(N, 0.0f);
  v_fresh_.assign(N, 0.0f);
  coef_.assign(L, 0.0f);
  c_freeze_.assign(L, 0.0f);
  last_factor_.assign(L, 1.0f);
  masks_.resize(L);
  mask_ptrs_.assign(L, nullptr);
  u0_sq_.resize(L);
  max_ratio_.resize(L);
}

void OnebitLamb::set_momentum_mask(size_t layer, std::span<const float> mask) {
  ONEBIT_CHECK(layer < layout_.num_layers(), name() << ": no layer " << layer);
  ONEBIT_CHECK(mask.empty() || mask.size() == layout_[layer].size,
               name() << ": mask for layer " << layer << " has " << mask.size() << " elements, the layer "
                      << layout_[layer].size);
  // The stored momentum carries the old mask: write it out before the mask changes.
  if (m_in_signs_) {
    m_.resize(layout_.total());
    kernels::decode_momentum(allreduce_.partition(), pool_, momentum(), m_.data());
    m_in_signs_ = false;
  }
  masks_[layer].assign(mask.begin(), mask.end());
  mask_ptrs_[layer] = mask.empty() ? nullptr : masks_[layer].data();
}

bool OnebitLamb::step(std::span<float> w, std::span<float> g) {
  check_sizes(w, g);
  const bool done = in_warmup() ? warmup_step(w, g) : refresh_due() ? refresh_step(w, g) : compression_step(w, g);
  done ? ++step_ : ++skipped_;
  return done;
}

// Steps 1..freeze_step: LAMB on the fp32-averaged gradient, plus the running average of the ratios.
bool OnebitLamb::warmup_step(std::span<float> w, std::span<float> g) {
  average_gradients(g);
  const kernels::MomentParams p = moments(opt_);
  if (!lamb_ratios(g.data(), m_.data(), v_.data(), w.data(), p, opt_.min_coeff, opt_.max_coeff, ratio_))
    return false;
  for (size_t l = 0; l < coef_.size(); ++l) {
    coef_[l] = opt_.lr * static_cast<float>(ratio_[l]);
    if (ratio_[l] != 1.0)
      c_freeze_[l] = static_cast<float>(opt_.coeff_beta * c_freeze_[l] + (1 - opt_.coeff_beta) * ratio_[l]);
  }
  kernels::lamb_update(part_, pool_, g.data(), m_.data(), v_.data(), w.data(), p, coef_.data());
  if (freeze_.after_warmup_step(step_ + 1, v_.data(), opt_.beta2, part_, pool_)) v_fresh_ = v_;
  return true;
}

// Step 1 of the compression stage: k_l = mean_l(s_l) / s_l with s_l = ||m_l|| / sqrt(n_l).
void OnebitLamb::init_momentum_scale() {
  std::vector<double> m_sq(layout_.num_layers()), s(layout_.num_layers());
  kernels::layer_sq_norms(part_, pool_, m_.data(), m_sq.data());
  double mean = 0;
  for (size_t l = 0; l < s.size(); ++l) {
    s[l] = layout_[l].size ? std::sqrt(m_sq[l] / static_cast<double>(layout_[l].size)) : 0.0;
    mean += s[l] / static_cast<double>(s.size());
  }
  k_.resize(s.size());
  for (size_t l = 0; l < s.size(); ++l) k_[l] = s[l] > 0 ? static_cast<float>(mean / s[l]) : 1.0f;
}

kernels::Momentum OnebitLamb::signs(const uint8_t* bits, const float* scales) const {
  return {.bits = bits, .scales = scales, .k = k_.data(), .masks = mask_ptrs_.data()};
}

kernels::Momentum OnebitLamb::momentum() const {
  return m_in_signs_ ? signs(allreduce_.bits(), allreduce_.scales()) : kernels::Momentum{.values = m_.data()};
}

bool OnebitLamb::refresh_due() const {
  if (opt_.refresh_interval <= 0) return false;
  const int64_t since = step_ + 1 - freeze_.freeze_step();  // this step, counted from the freeze
  for (int64_t at = opt_.refresh_interval; at <= since; at = 2 * at + opt_.refresh_interval)
    if (at == since) return true;
  return false;
}

// Every rank's momentum as it would be without compression error: its local momentum plus its
// worker error (and, on the chunk it serves, the server error times P), averaged in fp32. The
// errors are then delivered, so they restart at zero, and k and the trust ratios are measured on
// the exact momentum: LAMB's step with the frozen variance.
bool OnebitLamb::refresh_step(std::span<float> w, std::span<float> g) {
  const size_t N = layout_.total(), P = static_cast<size_t>(comm_.size());
  if (k_.empty()) init_momentum_scale();
  freeze_denominator(d_, v_, opt_.eps);
  AlignedVector<float> x(N);
  kernels::decode_momentum(allreduce_.partition(), pool_, momentum(), x.data());
  const std::vector<float> we = allreduce_.worker_error(), se = allreduce_.server_error();
  const size_t chunk0 = static_cast<size_t>(comm_.rank()) * allreduce_.chunk_size();
  for (size_t l = 0; l < layout_.num_layers(); ++l) {
    const float inv_k = 1.0f / k_[l];
    for (size_t i = layout_[l].offset; i < layout_[l].offset + layout_[l].size; ++i) {
      float e = we[i];
      if (i >= chunk0 && i - chunk0 < se.size()) e += static_cast<float>(P) * se[i - chunk0];
      x[i] = opt_.beta1 * x[i] + (1 - opt_.beta1) * g[i] + e * inv_k;
    }
  }
  exchange_average(x);
  for (float v : x)
    if (!std::isfinite(v)) return false;  // every rank holds the same average: all skip together
  for (size_t l = 0; l < layout_.num_layers(); ++l)
    if (mask_ptrs_[l])
      for (size_t i = 0; i < layout_[l].size; ++i) x[layout_[l].offset + i] *= mask_ptrs_[l][i];
  m_ = std::move(x);
  m_in_signs_ = false;
  allreduce_.set_errors(std::vector<float>(N, 0.0f), std::vector<float>(se.size(), 0.0f));
  init_momentum_scale();
  // u = m/d + wd*w, its norms and LAMB's ratio per layer.
  AlignedVector<float> u(N);
  for (size_t i = 0; i < N; ++i) u[i] = m_[i] / d_[i] + opt_.weight_decay * w[i];
  kernels::layer_sq_norms(part_, pool_, u.data(), u_sq_.data());
  kernels::layer_sq_norms(part_, pool_, w.data(), w_sq_.data());
  for (size_t l = 0; l < coef_.size(); ++l) {
    const double r = w_sq_[l] > 0 && u_sq_[l] > 0
                         ? std::clamp(std::sqrt(w_sq_[l]) / std::sqrt(u_sq_[l]), static_cast<double>(opt_.min_coeff),
                                      static_cast<double>(opt_.max_coeff))
                         : 1.0;
    c_freeze_[l] = static_cast<float>(r);
    last_factor_[l] = 1.0f;
    coef_[l] = opt_.lr * c_freeze_[l];
  }
  kernels::frozen_update(allreduce_.partition(), pool_, kernels::Momentum{.values = m_.data()}, d_.data(), w.data(),
                         opt_.weight_decay, coef_.data());
  ++refreshes_;
  return true;
}

// Past the paper (track_scales): k follows each layer's gradient RMS, averaged over the ranks with
// one fp32 all-reduce of a value per layer and smoothed over steps with beta1, so a layer whose
// gradients shrink after the freeze keeps its share of the 1-bit scale. The errors live in scaled
// units and are rescaled with k. False, with nothing changed, if a rank's gradient is not finite.
bool OnebitLamb::track_scales(std::span<const float> g) {
  const size_t L = layout_.num_layers();
  std::vector<double> sq(L);
  kernels::layer_sq_norms(part_, pool_, g.data(), sq.data());
  std::vector<float> sum(sq.begin(), sq.end());
  comm_.allreduce_sum(std::span<float>(sum));
  for (float x : sum)
    if (!std::isfinite(x)) return false;  // the same sums on every rank: all skip together
  if (g_rms_.empty()) g_rms_.assign(L, 0.0f);
  double mean = 0;
  for (size_t l = 0; l < L; ++l) {
    const float rms = static_cast<float>(std::sqrt(sum[l] / comm_.size() / static_cast<double>(layout_[l].size)));
    g_rms_[l] = g_rms_[l] == 0 ? rms : opt_.beta1 * g_rms_[l] + (1 - opt_.beta1) * rms;
    mean += g_rms_[l] / static_cast<double>(L);
  }
  std::vector<float> we = allreduce_.worker_error(), se = allreduce_.server_error();
  const size_t chunk0 = static_cast<size_t>(comm_.rank()) * allreduce_.chunk_size();
  for (size_t l = 0; l < L; ++l) {
    k_[l] = g_rms_[l] > 0 ? static_cast<float>(mean / g_rms_[l]) : 1.0f;
    const float r = k_[l] / k_prev_[l];
    const size_t a = layout_[l].offset, b = a + layout_[l].size;
    for (size_t i = a; i < b; ++i) we[i] *= r;
    for (size_t i = std::max(a, chunk0); i < std::min(b, chunk0 + se.size()); ++i) se[i - chunk0] *= r;
  }
  allreduce_.set_errors(we, se);
  return true;
}

bool OnebitLamb::compression_step(std::span<float> w, std::span<float> g) {
  if (k_.empty()) init_momentum_scale();
  freeze_denominator(d_, v_, opt_.eps);
  k_prev_ = k_;  // the scales the last exchange was made with
  if (opt_.track_scales == 1 && !track_scales(g)) return false;
  // Steps 2-4: the scaled local momentum (b1*m_prev + (1-b1)*g)*k is formed inside the compression
  // pass and never stored.
  kernels::Momentum m_prev = momentum();
  if (m_in_signs_) m_prev.k = k_prev_.data();
  if (!allreduce_.compress_momentum(m_prev, g, opt_.beta1, k_.data())) return false;
  allreduce_.exchange();
  // Step 5 is where the momentum now lives: the exchange's signs, read by the passes below.
  const kernels::Momentum m = signs(allreduce_.bits(), allreduce_.scales());
  const kernels::Momentum prev = m_prev;  // its buffers are the previous exchange's now
  // Steps 6-7 and the reductions of step 8, one pass.
  const kernels::OnebitLambSums sums{w_sq_.data(), u_sq_.data(), u0_sq_.data(), max_ratio_.data()};
  kernels::onebit_lamb_norms(allreduce_.partition(), pool_, m, prev, moments(opt_), d_.data(), v_fresh_.data(),
                             w.data(), sums);
  // Step 8: the factor per layer. With refreshes it is held at 1 instead: between two of them the
  // trust ratio measured at the last stands (docs/algorithm.md §10).
  for (size_t l = 0; l < coef_.size(); ++l) {
    if (opt_.refresh_interval > 0) {
      coef_[l] = opt_.lr * c_freeze_[l];
      continue;
    }
    double f = max_ratio_[l];
    if (opt_.weight_decay > 0 && u_sq_[l] > 0) {
      const double rho = std::min(1.0, std::sqrt(u0_sq_[l]) / std::sqrt(u_sq_[l]));
      f = rho * f + (1 - rho);
    }
    f = std::clamp(f, static_cast<double>(opt_.factor_min), static_cast<double>(opt_.factor_max));
    const double last = last_factor_[l];
    f = std::clamp(f, last * (1 - opt_.factor_threshold), last * (1 + opt_.factor_threshold));
    last_factor_[l] = static_cast<float>(f);
    coef_[l] = opt_.lr * (c_freeze_[l] * last_factor_[l]);
  }
  // Step 9: w <- w - lr * (c_freeze * f) * u.
  kernels::frozen_update(allreduce_.partition(), pool_, m, d_.data(), w.data(), opt_.weight_decay, coef_.data());
  if (!m_in_signs_) {
    m_in_signs_ = true;
    m_ = {};
  }
  return true;
}

std::vector<float> OnebitLamb::layer_trust() const {
  if (in_warmup() || k_.empty()) return std::vector<float>(ratio_.begin(), ratio_.end());
  std::vector<float> t(c_freeze_.size());
  for (size_t l = 0; l < t.size(); ++l) t[l] = c_freeze_[l] * last_factor_[l];
  return t;
}

OptimizerState OnebitLamb::state() const {
  OptimizerState s;
  save_common(s);
  s.tensors["m"].resize(layout_.total());
  kernels::decode_momentum(allreduce_.partition(), pool_, momentum(), s.tensors["m"].data());
  s.tensors["v"] = plain(v_);
  s.tensors["v_fresh"] = plain(v_fresh_);
  s.tensors["c_freeze"] = c_freeze_;
  s.tensors["last_factor"] = last_factor_;
  s.tensors["k"] = k_;
  s.tensors["worker_error"] = allreduce_.worker_error();
  s.tensors["server_error"] = allreduce_.server_error();
  s.tensors["g_rms"] = g_rms_;
  s.counters["refreshes"] = refreshes_;
  freeze_.save(s.tensors, s.counters);
  return s;
}

void OnebitLamb::load_state(const OptimizerState& s) {
  load_common(s);
  freeze_.load(s.tensors, s.counters, name());
  const size_t N = layout_.total(), L = layout_.num_layers();
  take(s, "m", m_, N, name());
  m_in_signs_ = false;
  take(s, "v", v_, N, name());
  d_ = {};
  take(s, "v_fresh", v_fresh_, N, name());
  take(s, "c_freeze", c_freeze_, L, name());
  take(s, "last_factor", last_factor_, L, name());
  auto k = s.tensors.find("k");
  ONEBIT_CHECK(k != s.tensors.end() && (k->second.empty() || k->second.size() == L),
               name() << " load_state: 'k' missing or not one value per layer");
  k_ = k->second;
  const auto rms = s.tensors.find("g_rms");  // absent from states older than track_scales
  g_rms_ = rms == s.tensors.end() ? std::vector<float>{} : rms->second;
  ONEBIT_CHECK(g_rms_.empty() || g_rms_.size() == L, name() << " load_state: 'g_rms' is not one value per layer");
  const auto refreshes = s.counters.find("refreshes");
  refreshes_ = refreshes == s.counters.end() ? 0 : refreshes->second;
  std::vector<float> we, se;
  take(s, "worker_error", we, N, name());
  take(s, "server_error", se, allreduce_.server_error().size(), name());
  allreduce_.set_errors(we, se);
}

}  // namespace onebit
