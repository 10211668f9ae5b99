// CudaOnebitLamb and CudaOnebitAdam: optim/onebit_lamb.cpp and optim/onebit_adam.cpp on the GPU,
// step for step, with the per-layer scalar math on the device.
#include "cuda_check.hpp"
#include "device_collectives.hpp"
#include "launchers.hpp"
#include "onebit/cuda_optimizers.hpp"
#include "options.hpp"

namespace onebit::cuda {
namespace {
// The automatic freeze, docs/algorithm.md §10 and the 16-bit warmup exchange (§11) run on the host
// optimizers only, so far.
template <class O>
void validate_on_device(const O& o, const char* who) {
  validate(o, who);
  ONEBIT_CHECK(o.warmup_exchange == WirePrecision::kFp32,
               who << " on CUDA: the 16-bit warmup exchange is not implemented on the GPU yet; use fp32");
  ONEBIT_CHECK(o.freeze_step != kAutoFreeze,
               who << " on CUDA: freeze_step auto is not implemented on the GPU yet; give the last warmup step");
  if constexpr (requires { o.refresh_interval; })
    ONEBIT_CHECK(o.refresh_interval <= 0 && o.track_scales <= 0,
                 who << " on CUDA: refresh_interval and track_scales are not implemented on the GPU yet");
  ONEBIT_CHECK(o.scale_group <= 0, who << " on CUDA: scale_group is not implemented on the GPU yet; use 0");
}
}  // namespace

// --- CudaOnebitLamb -----------------------------------------------------------------------------

CudaOnebitLamb::CudaOnebitLamb(const FlatLayout& layout, Communicator& comm, Stream stream,
                               OnebitLambOptions options)
    : CudaOptimizer(layout, comm, stream),
      opt_((validate_on_device(options, "onebit-lamb"), options)),
      allreduce_(comm, stream, layout.total(), layout.boundaries(), skip()) {
  check_agreement(settings_of(opt_));
  const size_t N = layout.total(), L = layout.num_layers();
  for (auto* a : {&m_, &v_, &v_fresh_}) {
    *a = DeviceArray<float>(N);
    a->zero(stream_);
  }
  c_freeze_ = DeviceArray<float>(L);
  c_freeze_.zero(stream_);
  last_factor_ = DeviceArray<float>(L);
  fill(last_factor_.data(), L, 1.0f, stream_);
  k_ = DeviceArray<float>(L);
  u0_sq_ = DeviceArray<double>(L);
  m_sq_ = DeviceArray<double>(L);
  max_ratio_ = DeviceArray<float>(L);
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
  masks_[layer] = mask.empty() ? DeviceArray<float>() : DeviceArray<float>(mask);
  std::vector<const float*> ptrs(masks_.size());
  any_mask_ = false;
  for (size_t l = 0; l < masks_.size(); ++l) {
    ptrs[l] = masks_[l].size() ? masks_[l].data() : nullptr;
    any_mask_ = any_mask_ || ptrs[l];
  }
  mask_ptrs_.upload(ptrs);
}

void CudaOnebitLamb::enqueue(float* w, float* g) {
  pending_compression_ = step_ >= opt_.freeze_step;
  pending_compression_ ? compression(w, g) : warmup(w, g);
}

void CudaOnebitLamb::applied() {
  if (pending_compression_) allreduce_.commit(true);
}

// Steps 1..freeze_step: LAMB on the fp32-averaged gradient, plus the running average of the ratios.
void CudaOnebitLamb::warmup(float* w, float* g) {
  average_gradients(g);
  const LambCoefArgs c{w_sq_.data(), u_sq_.data(), layout_.num_layers(), opt_.lr, opt_.min_coeff,
                       opt_.max_coeff, true, coef_.data(), c_freeze_.data(), opt_.coeff_beta};
  lamb_pass(w, g, m_.data(), v_.data(), moments(opt_), c);
  if (step_ + 1 == opt_.freeze_step) copy(v_fresh_.data(), v_.data(), layout_.total(), stream_, skip());
}

void CudaOnebitLamb::compression(float* w, float* g) {
  if (!k_ready_) {
    // Step 1 of the compression stage, once: k from the momentum at the end of warmup.
    layer_sq_norms(dpart_, m_.data(), m_sq_.data(), stream_);
    momentum_scales(dpart_, m_sq_.data(), k_.data(), stream_);
    k_ready_ = true;
  }
  // Steps 2-4: m still holds m_prev; the scaled local momentum is formed inside the compression.
  allreduce_.compress_momentum(m_.data(), g, opt_.beta1, k_.data());
  allreduce_.exchange();
  // Steps 5-7 and the reductions of step 8, one pass, then the factor per layer on the device.
  const kernels::OnebitLambSums sums{w_sq_.data(), u_sq_.data(), u0_sq_.data(), max_ratio_.data()};
  onebit_lamb_norms(allreduce_.partition(), allreduce_.bits(), allreduce_.chunk_scales(), k_.data(),
                    any_mask_ ? mask_ptrs_.data() : nullptr, moments(opt_), m_.data(), v_.data(),
                    v_fresh_.data(), w, sums, stream_, skip());
  const OnebitCoefArgs c{sums, layout_.num_layers(), opt_.lr, opt_.weight_decay, opt_.factor_min,
                         opt_.factor_max, opt_.factor_threshold, c_freeze_.data(), last_factor_.data(),
                         coef_.data()};
  onebit_lamb_coefficients(c, stream_, skip());
  // Step 9: w <- w - lr * (c_freeze * f) * u.
  frozen_update(dpart_, m_.data(), v_.data(), w, opt_.eps, opt_.weight_decay, coef_.data(), stream_, skip());
}

std::vector<float> CudaOnebitLamb::c_freeze() { sync(); return download(c_freeze_); }
std::vector<float> CudaOnebitLamb::last_factor() { sync(); return download(last_factor_); }
std::vector<float> CudaOnebitLamb::k() {
  sync();
  return k_ready_ ? download(k_) : std::vector<float>{};
}

OptimizerState CudaOnebitLamb::state() const {
  // A step in flight is waited for and reported, not folded in (state() is const): counted by
  // save_counters, and its worker error read where applied() will commit it.
  const Outcome o = outcome();
  OptimizerState s;
  save_counters(s, o);
  s.tensors["m"] = download(m_);
  s.tensors["v"] = download(v_);
  s.tensors["v_fresh"] = download(v_fresh_);
  s.tensors["c_freeze"] = download(c_freeze_);
  s.tensors["last_factor"] = download(last_factor_);
  s.tensors["k"] = k_ready_ ? download(k_) : std::vector<float>{};
  s.tensors["worker_error"] = allreduce_.worker_error(o.in_flight && o.applied && pending_compression_);
  s.tensors["server_error"] = allreduce_.server_error();
  return s;
}

void CudaOnebitLamb::load_state(const OptimizerState& s) {
  sync();
  load_common(s);
  const size_t N = layout_.total(), L = layout_.num_layers();
  upload(m_, s, "m", N);
  upload(v_, s, "v", N);
  upload(v_fresh_, s, "v_fresh", N);
  upload(c_freeze_, s, "c_freeze", L);
  upload(last_factor_, s, "last_factor", L);
  auto k = s.tensors.find("k");
  ONEBIT_CHECK(k != s.tensors.end() && (k->second.empty() || k->second.size() == L),
               name() << " load_state: 'k' missing or not one value per layer");
  k_ready_ = !k->second.empty();
  if (k_ready_) k_.upload(k->second);
  auto tensor = [&](const char* key) {
    auto it = s.tensors.find(key);
    ONEBIT_CHECK(it != s.tensors.end(), name() << " load_state: the state has no '" << key << "'");
    return std::span<const float>(it->second);
  };
  allreduce_.set_errors(tensor("worker_error"), tensor("server_error"));
}

// --- CudaOnebitAdam -----------------------------------------------------------------------------

CudaOnebitAdam::CudaOnebitAdam(const FlatLayout& layout, Communicator& comm, Stream stream,
                               OnebitAdamOptions options)
    : CudaOptimizer(layout, comm, stream),
      opt_((validate_on_device(options, "onebit-adam"), options)),
      allreduce_(comm, stream, layout.total(), layout.boundaries(), skip()),
      m_(layout.total()),
      v_(layout.total()) {
  check_agreement(settings_of(opt_));
  m_.zero(stream_);
  v_.zero(stream_);
}

void CudaOnebitAdam::enqueue(float* w, float* g) {
  pending_compression_ = step_ >= opt_.freeze_step;
  const kernels::MomentParams p = moments(opt_);
  if (!pending_compression_) {
    average_gradients(g);
    // The LAMB reduction pass only serves to find a non-finite gradient before anything changes.
    const LambCoefArgs c{w_sq_.data(), u_sq_.data(), layout_.num_layers(), opt_.lr, 1.0f, 1.0f, false,
                         coef_.data(), nullptr, 0.0f};
    lamb_pass(w, g, m_.data(), v_.data(), p, c);
  } else {
    fill(coef_.data(), layout_.num_layers(), opt_.lr, stream_);
    allreduce_.compress_momentum(m_.data(), g, opt_.beta1, nullptr);
    allreduce_.exchange();
    // Decode into m and the frozen-variance update in one pass (the same bits as two).
    decode_frozen_update(allreduce_.partition(), allreduce_.bits(), allreduce_.chunk_scales(), m_.data(),
                         v_.data(), w, opt_.eps, opt_.weight_decay, coef_.data(), stream_, skip());
  }
}

void CudaOnebitAdam::applied() {
  if (pending_compression_) allreduce_.commit(true);
}

OptimizerState CudaOnebitAdam::state() const {
  // As CudaOnebitLamb::state(): a step in flight is reported, not folded in.
  const Outcome o = outcome();
  OptimizerState s;
  save_counters(s, o);
  s.tensors["m"] = download(m_);
  s.tensors["v"] = download(v_);
  s.tensors["worker_error"] = allreduce_.worker_error(o.in_flight && o.applied && pending_compression_);
  s.tensors["server_error"] = allreduce_.server_error();
  return s;
}

void CudaOnebitAdam::load_state(const OptimizerState& s) {
  sync();
  load_common(s);
  upload(m_, s, "m", layout_.total());
  upload(v_, s, "v", layout_.total());
  auto tensor = [&](const char* key) {
    auto it = s.tensors.find(key);
    ONEBIT_CHECK(it != s.tensors.end(), name() << " load_state: the state has no '" << key << "'");
    return std::span<const float>(it->second);
  };
  allreduce_.set_errors(tensor("worker_error"), tensor("server_error"));
}

}  // namespace onebit::cuda
