// CudaOnebitLamb and CudaOnebitAdam: optim/onebit_lamb.cpp and optim/onebit_adam.cpp on the GPU,
// step for step, with the per-layer scalar math on the device: the automatic freeze, refresh steps,
// tracked scales, scale groups, the 16-bit warmup exchange, and the compression-stage momentum kept
// in the exchange's sign bits.
#include "cuda_check.hpp"
#include "device_collectives.hpp"
#include "launchers.hpp"
#include "onebit/cuda_optimizers.hpp"
#include "options.hpp"

namespace onebit::cuda {
namespace {
// The error state of a checkpoint into the allreduce.
void load_errors(CudaCompressedAllreduce& ar, const OptimizerState& s, const std::string& who) {
  auto tensor = [&](const char* key) {
    auto it = s.tensors.find(key);
    ONEBIT_CHECK(it != s.tensors.end(), who << " load_state: the state has no '" << key << "'");
    return std::span<const float>(it->second);
  };
  ar.set_errors(tensor("worker_error"), tensor("server_error"));
}
}  // namespace

// --- DeviceFreeze -------------------------------------------------------------------------------

DeviceFreeze::DeviceFreeze(int64_t freeze_step, const AutoFreezeOptions& o, const FlatLayout& layout)
    : schedule_(freeze_step, o, layout), v_sq_(layout.num_layers()) {}

void DeviceFreeze::measure(int64_t t, const DevicePartition& part, const float* v, Stream stream, const int* skip) {
  if (!schedule_.measures(t)) return;
  layer_sq_norms(part, v, v_sq_.data(), stream, skip);
  measured_ = t;
}

std::vector<double> DeviceFreeze::sums_after(int64_t t) const {
  return measured_ == t ? v_sq_.download() : std::vector<double>(v_sq_.size());  // unread unless measured
}

bool DeviceFreeze::decide(int64_t t, float beta2) { return schedule_.after_warmup_step(t, sums_after(t).data(), beta2); }

FreezeSchedule DeviceFreeze::after(int64_t t, float beta2) const {
  FreezeSchedule s = schedule_;
  s.after_warmup_step(t, sums_after(t).data(), beta2);
  return s;
}

// --- CudaOnebitLamb -----------------------------------------------------------------------------

CudaOnebitLamb::CudaOnebitLamb(const FlatLayout& layout, Communicator& comm, Stream stream,
                               OnebitLambOptions options)
    : CudaOptimizer(layout, comm, stream, options.warmup_exchange),
      opt_(settled(options, "onebit-lamb")),
      freeze_(opt_.freeze_step, opt_.auto_freeze, layout),
      allreduce_(comm, stream, layout.total(), layout.boundaries(), skip(), static_cast<size_t>(opt_.scale_group)) {
  check_agreement(settings_of(opt_));
  const size_t N = layout.total(), L = layout.num_layers();
  for (auto* a : {&m_, &v_, &v_fresh_}) {
    *a = DeviceArray<float>(N);
    a->zero(stream_);
  }
  for (auto* a : {&c_freeze_, &k_, &k_prev_, &g_rms_, &g_sum_, &max_ratio_}) {
    *a = DeviceArray<float>(L);
    a->zero(stream_);
  }
  last_factor_ = DeviceArray<float>(L);
  fill(last_factor_.data(), L, 1.0f, stream_);
  u0_sq_ = DeviceArray<double>(L);
  m_sq_ = DeviceArray<double>(L);
  masks_.resize(L);
  mask_ptrs_ = DeviceArray<const float*>(L);
  mask_ptrs_.zero(stream_);
}

void CudaOnebitLamb::set_momentum_mask(size_t layer, std::span<const float> mask) {
  ONEBIT_CHECK(layer < layout_.num_layers(), name() << ": no layer " << layer);
  ONEBIT_CHECK(mask.empty() || mask.size() == layout_[layer].size,
               name() << ": mask for layer " << layer << " has " << mask.size() << " elements, the layer "
                      << layout_[layer].size);
  sync();
  coll_->wait(name() + " set_momentum_mask");  // a step in flight may still read the old mask
  // The stored momentum carries the old mask: write it out before the mask changes.
  if (m_in_signs_) {
    decode_momentum(allreduce_.partition(), momentum(), m_.data(), stream_);
    m_in_signs_ = false;
    coll_->wait(name() + " set_momentum_mask");  // the decode reads the old mask
  }
  masks_[layer] = mask.empty() ? DeviceArray<float>() : DeviceArray<float>(mask);
  std::vector<const float*> ptrs(masks_.size());
  any_mask_ = false;
  for (size_t l = 0; l < masks_.size(); ++l) {
    ptrs[l] = masks_[l].size() ? masks_[l].data() : nullptr;
    any_mask_ = any_mask_ || ptrs[l];
  }
  coll_->wait(name() + " set_momentum_mask");
  mask_ptrs_.upload(ptrs);
}

kernels::Momentum CudaOnebitLamb::signs(const uint8_t* bits, const float* scales, const float* k) const {
  return {.bits = bits, .scales = scales, .k = k, .masks = any_mask_ ? mask_ptrs_.data() : nullptr};
}

kernels::Momentum CudaOnebitLamb::momentum(bool in_flight_applied) const {
  if (in_flight_applied && stage_ == Stage::kCompression) return signs(allreduce_.bits(), allreduce_.scales(), k_.data());
  if (in_flight_applied && stage_ == Stage::kRefresh) return {.values = x_.data()};
  return m_in_signs_ ? signs(allreduce_.committed_bits(), allreduce_.committed_scales(), k_.data())
                     : kernels::Momentum{.values = m_.data()};
}

bool CudaOnebitLamb::refresh_due() const {
  if (opt_.refresh_interval <= 0) return false;
  const int64_t since = step_ + 1 - freeze_step();  // this step, counted from the freeze
  for (int64_t at = opt_.refresh_interval; at <= since; at = 2 * at + opt_.refresh_interval)
    if (at == since) return true;
  return false;
}

void CudaOnebitLamb::enqueue(float* w, float* g) {
  stage_ = in_warmup() ? Stage::kWarmup : refresh_due() ? Stage::kRefresh : Stage::kCompression;
  if (stage_ == Stage::kWarmup) warmup(w, g);
  else if (stage_ == Stage::kRefresh) refresh(w, g);
  else compression(w, g);
}

void CudaOnebitLamb::applied() {
  switch (stage_) {
    case Stage::kWarmup:
      if (freeze_.decide(step_ + 1, opt_.beta2)) copy(v_fresh_.data(), v_.data(), layout_.total(), stream_);
      break;
    case Stage::kCompression:
      allreduce_.commit(true);
      m_in_signs_ = true;
      g_rms_ready_ = g_rms_ready_ || opt_.track_scales == 1;
      break;
    case Stage::kRefresh:
      std::swap(m_, x_);
      m_in_signs_ = false;
      ++refreshes_;
      break;
  }
}

// Steps 1..freeze: LAMB on the averaged gradient, plus the running average of the ratios.
void CudaOnebitLamb::warmup(float* w, float* g) {
  average_gradients(g);
  const LambCoefArgs c{w_sq_.data(), u_sq_.data(), layout_.num_layers(), opt_.lr, opt_.min_coeff,
                       opt_.max_coeff, true, coef_.data(), c_freeze_.data(), opt_.coeff_beta};
  lamb_pass(w, g, m_.data(), v_.data(), moments(opt_), c);
  freeze_.measure(step_ + 1, dpart_, v_.data(), stream_, skip());
}

// Step 1 of the compression stage: k_l = mean_l(s_l) / s_l with s_l = ||m_l|| / sqrt(n_l).
void CudaOnebitLamb::init_momentum_scale() {
  layer_sq_norms(dpart_, m_.data(), m_sq_.data(), stream_);
  momentum_scales(dpart_, m_sq_.data(), k_.data(), stream_);
  k_ready_ = true;
}

// As OnebitLamb::track_scales: k follows each layer's gradient RMS over the ranks, and the errors,
// kept in scaled units, are rescaled with it.
void CudaOnebitLamb::track_scales(const float* g) {
  const size_t L = layout_.num_layers();
  layer_sq_norms(dpart_, g, m_sq_.data(), stream_, skip());
  to_float(m_sq_.data(), g_sum_.data(), L, stream_, skip());
  coll_->allreduce_sum(g_sum_.data(), L);
  cuda::track_scales(dpart_, g_sum_.data(), comm_.size(), opt_.beta1, g_rms_.data(), k_.data(), skip(), stream_);
  rescale_errors(allreduce_.partition(), allreduce_.worker_c(), allreduce_.worker_scales(), k_.data(),
                 k_prev_.data(), stream_, skip());
  rescale_errors(allreduce_.server_layer_partition(), allreduce_.server_c(), allreduce_.server_scales(), k_.data(),
                 k_prev_.data(), stream_, skip());
  allreduce_.zero_scales(skip());
}

void CudaOnebitLamb::compression(float* w, float* g) {
  if (!k_ready_) init_momentum_scale();
  copy(k_prev_.data(), k_.data(), layout_.num_layers(), stream_);  // the scales the last exchange was made with
  if (opt_.track_scales == 1) track_scales(g);
  // Steps 2-4: the scaled local momentum is formed inside the compression pass.
  kernels::Momentum m_prev = momentum();
  if (m_in_signs_) m_prev.k = k_prev_.data();
  allreduce_.compress_momentum(m_prev, g, opt_.beta1, k_.data());
  allreduce_.exchange();
  // Step 5 is where the momentum now lives: the exchange's signs, read by the passes below.
  const kernels::Momentum m = signs(allreduce_.bits(), allreduce_.scales(), k_.data());
  // Steps 6-7 and the reductions of step 8, one pass, then the factor per layer on the device
  // (held at 1 with refreshes: between two of them the last measured trust ratio stands).
  const kernels::OnebitLambSums sums{w_sq_.data(), u_sq_.data(), u0_sq_.data(), max_ratio_.data()};
  onebit_lamb_norms(allreduce_.partition(), m, m_prev, moments(opt_), v_.data(), v_fresh_.data(), w, sums, stream_,
                    skip());
  const OnebitCoefArgs c{sums, layout_.num_layers(), opt_.lr, opt_.weight_decay, opt_.factor_min, opt_.factor_max,
                         opt_.factor_threshold, c_freeze_.data(), last_factor_.data(), coef_.data(),
                         opt_.refresh_interval > 0};
  onebit_lamb_coefficients(c, stream_, skip());
  // Step 9: w <- w - lr * (c_freeze * f) * u.
  frozen_update(allreduce_.partition(), m, v_.data(), w, opt_.eps, opt_.weight_decay, coef_.data(), stream_, skip());
}

// As OnebitLamb::refresh_step: every rank's momentum as it would be without compression error,
// averaged in the warmup's precision; the errors restart at zero and k and the trust ratios are
// measured on it. The new momentum is x_ until the step is applied.
void CudaOnebitLamb::refresh(float* w, float* g) {
  const size_t N = layout_.total(), L = layout_.num_layers();
  if (!k_ready_) init_momentum_scale();
  if (x_.size() != N) x_ = DeviceArray<float>(N);
  const RefreshArgs a{momentum(), g, opt_.beta1, k_.data(), allreduce_.worker_c(), allreduce_.worker_scales(),
                      allreduce_.server_c(), allreduce_.server_scales(), allreduce_.partition().host().groups_per_chunk(),
                      comm_.rank(), comm_.size(), x_.data()};
  refresh_momentum(allreduce_.partition(), a, stream_, skip());
  exchange_average(x_.data(), N);
  layer_sq_norms(dpart_, x_.data(), m_sq_.data(), stream_, skip());
  flag_nonfinite(m_sq_.data(), L, skip(), stream_);  // every rank holds the same average: all skip together
  if (any_mask_) apply_masks(dpart_, x_.data(), mask_ptrs_.data(), stream_, skip());
  fill(allreduce_.worker_c(), N, 0.0f, stream_, skip());
  fill(allreduce_.server_c(), allreduce_.server_partition().size(), 0.0f, stream_, skip());
  allreduce_.zero_scales(skip());
  // k from the new momentum: the sums above serve unless a mask changed it.
  if (any_mask_) layer_sq_norms(dpart_, x_.data(), m_sq_.data(), stream_, skip());
  momentum_scales(dpart_, m_sq_.data(), k_.data(), stream_, skip());
  frozen_norms(dpart_, x_.data(), v_.data(), w, opt_.eps, opt_.weight_decay, w_sq_.data(), u_sq_.data(), stream_,
               skip());
  refresh_coefficients({w_sq_.data(), u_sq_.data(), L, opt_.lr, opt_.min_coeff, opt_.max_coeff, c_freeze_.data(),
                        last_factor_.data(), coef_.data()},
                       stream_, skip());
  frozen_update(dpart_, {.values = x_.data()}, v_.data(), w, opt_.eps, opt_.weight_decay, coef_.data(), stream_,
                skip());
}

std::vector<float> CudaOnebitLamb::c_freeze() { sync(); return download(c_freeze_); }
std::vector<float> CudaOnebitLamb::last_factor() { sync(); return download(last_factor_); }
std::vector<float> CudaOnebitLamb::k() {
  sync();
  return k_ready_ ? download(k_) : std::vector<float>{};
}

OptimizerState CudaOnebitLamb::state() const {
  // A step in flight is waited for and reported, not folded in (state() is const): counted by
  // save_counters, and the rest read where applied() will find it.
  const Outcome o = outcome();
  const bool done = o.in_flight && o.applied;
  OptimizerState s;
  save_counters(s, o);
  s.tensors["m"] = decoded(allreduce_.partition(), momentum(done));
  s.tensors["v"] = download(v_);
  s.tensors["v_fresh"] = download(v_fresh_);
  if (done && stage_ == Stage::kWarmup) {
    const FreezeSchedule after = freeze_.after(step_ + 1, opt_.beta2);
    after.save(s.tensors, s.counters);
    if (after.freeze_step() == step_ + 1) s.tensors["v_fresh"] = s.tensors["v"];
  } else {
    freeze_.schedule().save(s.tensors, s.counters);
  }
  s.tensors["c_freeze"] = download(c_freeze_);
  s.tensors["last_factor"] = download(last_factor_);
  s.tensors["k"] = k_ready_ ? download(k_) : std::vector<float>{};
  s.tensors["worker_error"] = allreduce_.worker_error(done && stage_ == Stage::kCompression);
  s.tensors["server_error"] = allreduce_.server_error();
  const bool tracked = g_rms_ready_ || (done && stage_ == Stage::kCompression && opt_.track_scales == 1);
  s.tensors["g_rms"] = tracked ? download(g_rms_) : std::vector<float>{};
  s.counters["refreshes"] = refreshes_ + (done && stage_ == Stage::kRefresh ? 1 : 0);
  return s;
}

void CudaOnebitLamb::load_state(const OptimizerState& s) {
  sync();
  load_common(s);
  freeze_.schedule().load(s.tensors, s.counters, name());
  const size_t N = layout_.total(), L = layout_.num_layers();
  upload(m_, s, "m", N);
  m_in_signs_ = false;
  upload(v_, s, "v", N);
  upload(v_fresh_, s, "v_fresh", N);
  upload(c_freeze_, s, "c_freeze", L);
  upload(last_factor_, s, "last_factor", L);
  auto k = s.tensors.find("k");
  ONEBIT_CHECK(k != s.tensors.end() && (k->second.empty() || k->second.size() == L),
               name() << " load_state: 'k' missing or not one value per layer");
  k_ready_ = !k->second.empty();
  if (k_ready_) k_.upload(k->second);
  const auto rms = s.tensors.find("g_rms");  // absent from states older than track_scales
  g_rms_ready_ = rms != s.tensors.end() && !rms->second.empty();
  ONEBIT_CHECK(!g_rms_ready_ || rms->second.size() == L, name() << " load_state: 'g_rms' is not one value per layer");
  if (g_rms_ready_) g_rms_.upload(rms->second);
  else g_rms_.upload(std::vector<float>(L, 0.0f));
  const auto refreshes = s.counters.find("refreshes");
  refreshes_ = refreshes == s.counters.end() ? 0 : refreshes->second;
  load_errors(allreduce_, s, name());
}

// --- CudaOnebitAdam -----------------------------------------------------------------------------

CudaOnebitAdam::CudaOnebitAdam(const FlatLayout& layout, Communicator& comm, Stream stream,
                               OnebitAdamOptions options)
    : CudaOptimizer(layout, comm, stream, options.warmup_exchange),
      opt_((validate(options, "onebit-adam"), options)),
      freeze_(opt_.freeze_step, opt_.auto_freeze, layout),
      allreduce_(comm, stream, layout.total(), layout.boundaries(), skip(), static_cast<size_t>(opt_.scale_group)),
      m_(layout.total()),
      v_(layout.total()) {
  check_agreement(settings_of(opt_));
  m_.zero(stream_);
  v_.zero(stream_);
}

kernels::Momentum CudaOnebitAdam::momentum(bool in_flight_applied) const {
  if (in_flight_applied && pending_compression_) return {.bits = allreduce_.bits(), .scales = allreduce_.scales()};
  return m_in_signs_ ? kernels::Momentum{.bits = allreduce_.committed_bits(), .scales = allreduce_.committed_scales()}
                     : kernels::Momentum{.values = m_.data()};
}

void CudaOnebitAdam::enqueue(float* w, float* g) {
  pending_compression_ = !in_warmup();
  const kernels::MomentParams p = moments(opt_);
  if (!pending_compression_) {
    average_gradients(g);
    // The LAMB reduction pass only serves to find a non-finite gradient before anything changes.
    const LambCoefArgs c{w_sq_.data(), u_sq_.data(), layout_.num_layers(), opt_.lr, 1.0f, 1.0f, false,
                         coef_.data(), nullptr, 0.0f};
    lamb_pass(w, g, m_.data(), v_.data(), p, c);
    freeze_.measure(step_ + 1, dpart_, v_.data(), stream_, skip());
  } else {
    fill(coef_.data(), layout_.num_layers(), opt_.lr, stream_);
    allreduce_.compress_momentum(momentum(), g, opt_.beta1, nullptr);
    allreduce_.exchange();
    frozen_update(allreduce_.partition(), {.bits = allreduce_.bits(), .scales = allreduce_.scales()}, v_.data(), w,
                  opt_.eps, opt_.weight_decay, coef_.data(), stream_, skip());
  }
}

void CudaOnebitAdam::applied() {
  if (!pending_compression_) {
    freeze_.decide(step_ + 1, opt_.beta2);
    return;
  }
  allreduce_.commit(true);
  m_in_signs_ = true;
}

OptimizerState CudaOnebitAdam::state() const {
  // As CudaOnebitLamb::state(): a step in flight is reported, not folded in.
  const Outcome o = outcome();
  const bool done = o.in_flight && o.applied;
  OptimizerState s;
  save_counters(s, o);
  s.tensors["m"] = decoded(allreduce_.partition(), momentum(done));
  s.tensors["v"] = download(v_);
  s.tensors["worker_error"] = allreduce_.worker_error(done && pending_compression_);
  s.tensors["server_error"] = allreduce_.server_error();
  if (done && !pending_compression_) freeze_.after(step_ + 1, opt_.beta2).save(s.tensors, s.counters);
  else freeze_.schedule().save(s.tensors, s.counters);
  return s;
}

void CudaOnebitAdam::load_state(const OptimizerState& s) {
  sync();
  load_common(s);
  freeze_.schedule().load(s.tensors, s.counters, name());
  upload(m_, s, "m", layout_.total());
  m_in_signs_ = false;
  upload(v_, s, "v", layout_.total());
  load_errors(allreduce_, s, name());
}

}  // namespace onebit::cuda
