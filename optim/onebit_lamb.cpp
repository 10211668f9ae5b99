// 1-bit LAMB (spec §4): LAMB warmup that records the trust ratios, then compressed-momentum steps
// whose per-layer learning rate is the frozen ratio times a factor tracking the variance change.
#include <algorithm>
#include <cmath>

#include "onebit/error.hpp"
#include "onebit/optimizers.hpp"
#include "options.hpp"

namespace onebit {

OnebitLamb::OnebitLamb(const FlatLayout& layout, Communicator& comm, OnebitLambOptions options)
    : Optimizer(layout, comm, options.threads),
      opt_((validate(options, "onebit-lamb"), options)),
      allreduce_(comm, pool_, layout.total(), layout.boundaries()) {
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
  const bool done = step_ < opt_.freeze_step ? warmup_step(w, g) : compression_step(w, g);
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
  if (step_ + 1 == opt_.freeze_step) v_fresh_ = v_;
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

kernels::Momentum OnebitLamb::signs(const uint8_t* bits, const float* chunk_scales) const {
  return {.bits = bits, .chunk_scales = chunk_scales, .k = k_.data(), .masks = mask_ptrs_.data()};
}

kernels::Momentum OnebitLamb::momentum() const {
  return m_in_signs_ ? signs(allreduce_.bits(), allreduce_.chunk_scales()) : kernels::Momentum{.values = m_.data()};
}

bool OnebitLamb::compression_step(std::span<float> w, std::span<float> g) {
  if (k_.empty()) init_momentum_scale();
  freeze_denominator(d_, v_, opt_.eps);
  // Steps 2-4: the scaled local momentum (b1*m_prev + (1-b1)*g)*k is formed inside the compression
  // pass and never stored.
  const kernels::Momentum m_prev = momentum();
  if (!allreduce_.compress_momentum(m_prev, g, opt_.beta1, k_.data())) return false;
  allreduce_.exchange();
  // Step 5 is where the momentum now lives: the exchange's signs, read by the passes below.
  const kernels::Momentum m = signs(allreduce_.bits(), allreduce_.chunk_scales());
  const kernels::Momentum prev =
      m_in_signs_ ? signs(allreduce_.previous_bits(), allreduce_.previous_chunk_scales()) : m_prev;
  // Steps 6-7 and the reductions of step 8, one pass.
  const kernels::OnebitLambSums sums{w_sq_.data(), u_sq_.data(), u0_sq_.data(), max_ratio_.data()};
  kernels::onebit_lamb_norms(allreduce_.partition(), pool_, m, prev, moments(opt_), d_.data(), v_fresh_.data(),
                             w.data(), sums);
  // Step 8: the factor per layer.
  for (size_t l = 0; l < coef_.size(); ++l) {
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
  return s;
}

void OnebitLamb::load_state(const OptimizerState& s) {
  load_common(s);
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
  std::vector<float> we, se;
  take(s, "worker_error", we, N, name());
  take(s, "server_error", se, allreduce_.server_error().size(), name());
  allreduce_.set_errors(we, se);
}

}  // namespace onebit
