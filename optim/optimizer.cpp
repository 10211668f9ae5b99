// What every optimizer shares (sizes, the warmup exchange, LAMB trust ratios, state), and Lamb (docs/algorithm.md §3).
#include <algorithm>
#include <cmath>
#include <sstream>
#include <utility>

#include "onebit/error.hpp"
#include "onebit/optimizers.hpp"
#include "options.hpp"

namespace onebit {

CpuOptimizer::CpuOptimizer(const FlatLayout& layout, Communicator& comm, int threads, WirePrecision warmup_exchange)
    : Optimizer(layout, comm),
      pool_(threads),
      part_(layout.total(), layout.boundaries()),
      w_sq_(layout.num_layers()),
      u_sq_(layout.num_layers()) {
  if (warmup_exchange != WirePrecision::kFp32)
    half_ = std::make_unique<HalfAllreduce>(comm, pool_, layout.total(), warmup_exchange);
}

void Optimizer::check_sizes(std::span<float> params, std::span<float> grads) const {
  ONEBIT_CHECK(params.size() == layout_.total() && grads.size() == layout_.total(),
               name() << " step on rank " << comm_.rank() << ": " << params.size() << " parameters and "
                      << grads.size() << " gradients, the layout has " << layout_.total());
}

void Optimizer::set_momentum_mask(size_t /*layer*/, std::span<const float> /*mask*/) {
  throw Error(name() + ": momentum masks are a 1-bit LAMB option (docs/algorithm.md §4)");
}

void Optimizer::average_ahead(std::span<float> /*grads*/, size_t /*first*/, size_t /*last*/) {
  throw Error(name() + ": its next step's exchange cannot run ahead of it (overlap is for LAMB's steps and the warmup's, on the CPU)");
}

void CpuOptimizer::average_ahead(std::span<float> grads, size_t first, size_t last) {
  ONEBIT_CHECK(averages_gradient(), name() << " on rank " << comm_.rank() << ": the next step (" << next_stage()
                                           << ") exchanges more than the gradient, so it cannot run ahead");
  ONEBIT_CHECK(grads.size() == layout_.total() && first <= last && last <= grads.size() &&
                   averaged_ahead_ + (last - first) <= layout_.total(),
               name() << " average_ahead on rank " << comm_.rank() << ": [" << first << ", " << last << ") of "
                      << grads.size() << " gradients, " << averaged_ahead_ << " of " << layout_.total()
                      << " already averaged");
  averaged_ahead_ += last - first;
  exchange_average(grads.subspan(first, last - first));
}

void CpuOptimizer::exchange_average(std::span<float> x) {
  if (comm_.size() == 1) return;
  if (half_) return half_->average(x);
  comm_.allreduce_sum(x);
  kernels::divide(pool_, x, static_cast<float>(comm_.size()));
}

void CpuOptimizer::average_gradients(std::span<float> grads) {
  if (averaged_ahead_ != 0) {  // average_ahead did it
    const size_t done = std::exchange(averaged_ahead_, 0);
    ONEBIT_CHECK(done == layout_.total(), name() << " step on rank " << comm_.rank() << ": the exchange ahead of it "
                                                 << "averaged " << done << " of " << layout_.total() << " gradients");
    return;
  }
  exchange_average(grads);
}

bool CpuOptimizer::lamb_ratios(const float* g, const float* m, const float* v, const float* w,
                            const kernels::MomentParams& p, float min_coeff, float max_coeff,
                            std::vector<double>& ratio) {
  kernels::lamb_norms(part_, pool_, g, m, v, w, p, w_sq_.data(), u_sq_.data());
  ratio.resize(layout_.num_layers());
  for (size_t l = 0; l < ratio.size(); ++l) {
    // Every rank holds the same averaged gradient, so every rank sees the same non-finite sum.
    if (!std::isfinite(u_sq_[l]) || !std::isfinite(w_sq_[l])) return false;
    ratio[l] = w_sq_[l] > 0 && u_sq_[l] > 0
                   ? std::clamp(std::sqrt(w_sq_[l]) / std::sqrt(u_sq_[l]),
                                static_cast<double>(min_coeff), static_cast<double>(max_coeff))
                   : 1.0;
  }
  return true;
}

void CpuOptimizer::freeze_denominator(AlignedVector<float>& d, std::span<const float> v, float eps) {
  if (!d.empty()) return;
  d.resize(v.size());
  kernels::frozen_denominator(pool_, v, eps, d);
}

void Optimizer::save_common(OptimizerState& s) const {
  s.counters["step"] = step_;
  s.counters["skipped"] = skipped_;
  s.counters["world_size"] = comm_.size();
  s.counters["params"] = static_cast<int64_t>(layout_.total());
  s.counters["layers"] = static_cast<int64_t>(layout_.num_layers());
}

void Optimizer::load_common(const OptimizerState& s) {
  auto get = [&](const char* key) {
    auto it = s.counters.find(key);
    ONEBIT_CHECK(it != s.counters.end(), name() << " load_state on rank " << comm_.rank()
                                                << ": the state has no '" << key << "'");
    return it->second;
  };
  ONEBIT_CHECK(get("params") == static_cast<int64_t>(layout_.total()) &&
                   get("layers") == static_cast<int64_t>(layout_.num_layers()),
               name() << " load_state on rank " << comm_.rank() << ": state is for " << get("params")
                      << " parameters in " << get("layers") << " layers, this optimizer has "
                      << layout_.total() << " in " << layout_.num_layers());
  ONEBIT_CHECK(get("world_size") == comm_.size(),
               name() << " load_state on rank " << comm_.rank() << ": state was saved with "
                      << get("world_size") << " ranks, this run has " << comm_.size());
  step_ = get("step");
  skipped_ = get("skipped");
}

const std::vector<float>& find_tensor(const OptimizerState& s, const char* key, size_t expect,
                                      const std::string& who) {
  auto it = s.tensors.find(key);
  ONEBIT_CHECK(it != s.tensors.end(), who << " load_state: the state has no '" << key << "'");
  ONEBIT_CHECK(it->second.size() == expect, who << " load_state: '" << key << "' has "
                                                << it->second.size() << " elements, expected " << expect);
  return it->second;
}

std::string load_state(Optimizer& opt, const OptimizerState& s, OnResize on_resize) {
  const auto saved = s.counters.find("world_size");
  const int64_t world = opt.comm().size();
  if (saved == s.counters.end() || saved->second == world) {
    opt.load_state(s);
    return {};
  }
  ONEBIT_CHECK(on_resize == OnResize::kResetErrors,
               opt.name() << " load_state on rank " << opt.comm().rank() << ": the state was saved by "
                          << saved->second << " ranks, this run has " << world
                          << " (loading it anyway resets the error buffers: OnResize::kResetErrors)");
  OptimizerState resized = s;
  resized.counters["world_size"] = world;
  // The error buffers' shapes on this rank of this world: the optimizer's own.
  const OptimizerState mine = opt.state();
  std::string reset;
  for (const char* key : {"worker_error", "server_error"}) {
    const auto it = mine.tensors.find(key);
    if (it == mine.tensors.end()) continue;
    resized.tensors[key].assign(it->second.size(), 0.0f);
    reset += std::string(reset.empty() ? "" : " and ") + key;
  }
  opt.load_state(resized);
  if (reset.empty()) return {};
  std::ostringstream w;
  w << opt.name() << " on rank " << opt.comm().rank() << ": the state was saved by " << saved->second
    << " ranks, this run has " << world << "; " << reset
    << " restart from zero (the run continues, but not bit for bit as it would have)";
  return w.str();
}

// --- Lamb ------------------------------------------------------------------------------------

Lamb::Lamb(const FlatLayout& layout, Communicator& comm, LambOptions options)
    : CpuOptimizer(layout, comm, options.threads, options.warmup_exchange), opt_(options) {
  validate(opt_, "lamb");
  agree_across_ranks(comm, layout, settings_of(opt_), "lamb");
  m_.assign(layout.total(), 0.0f);
  v_.assign(layout.total(), 0.0f);
  coef_.assign(layout.num_layers(), 0.0f);
}

bool Lamb::step(std::span<float> w, std::span<float> g) {
  check_sizes(w, g);
  average_gradients(g);
  const kernels::MomentParams p = moments(opt_);
  if (!lamb_ratios(g.data(), m_.data(), v_.data(), w.data(), p, opt_.min_coeff, opt_.max_coeff, ratio_)) {
    ++skipped_;
    return false;
  }
  for (size_t l = 0; l < coef_.size(); ++l) coef_[l] = opt_.lr * static_cast<float>(ratio_[l]);
  kernels::lamb_update(part_, pool_, g.data(), m_.data(), v_.data(), w.data(), p, coef_.data());
  ++step_;
  return true;
}

std::vector<float> Lamb::layer_trust() const { return std::vector<float>(ratio_.begin(), ratio_.end()); }

OptimizerState Lamb::state() const {
  OptimizerState s;
  save_common(s);
  s.tensors["m"] = plain(m_);
  s.tensors["v"] = plain(v_);
  return s;
}

void Lamb::load_state(const OptimizerState& s) {
  load_common(s);
  take(s, "m", m_, layout_.total(), name());
  take(s, "v", v_, layout_.total(), name());
}

}  // namespace onebit
