// The end of the warmup, given or decided from v (see freeze_schedule.hpp).
#include "onebit/freeze_schedule.hpp"

#include <cmath>
#include <limits>

#include "onebit/error.hpp"

namespace onebit {

FreezeSchedule::FreezeSchedule(int64_t freeze_step, const AutoFreezeOptions& o, const FlatLayout& layout)
    : automatic_(freeze_step == kAutoFreeze),
      freeze_step_(freeze_step),
      o_(o),
      v_sq_(layout.num_layers()),
      movement_(std::numeric_limits<double>::quiet_NaN()) {
  for (const auto& l : layout.layers()) sizes_.push_back(static_cast<int64_t>(l.size));
}

bool FreezeSchedule::measures(int64_t t) const {
  return automatic_ && freeze_step_ == kAutoFreeze && t < o_.max_steps && t % o_.window == 0;
}

bool FreezeSchedule::after_warmup_step(int64_t t, const float* v, float beta2, const kernels::Partition& part,
                                       ThreadPool& pool) {
  if (measures(t)) kernels::layer_sq_norms(part, pool, v, v_sq_.data());
  return after_warmup_step(t, v_sq_.data(), beta2);
}

bool FreezeSchedule::after_warmup_step(int64_t t, const double* v_sq, float beta2) {
  if (!automatic_) return t == freeze_step_;
  if (freeze_step_ != kAutoFreeze) return false;  // decided already (cannot happen: no warmup after it)
  bool freeze = t >= o_.max_steps;
  if (measures(t)) {
    const double unbias = 1.0 - std::pow(static_cast<double>(beta2), static_cast<double>(t));
    std::vector<float> now(sizes_.size());
    for (size_t l = 0; l < now.size(); ++l)
      now[l] = sizes_[l] > 0 ? static_cast<float>(std::sqrt(v_sq[l] / static_cast<double>(sizes_[l])) / unbias) : 0.0f;
    if (snapshot_step_ > 0) {
      double moved = 0, weight = 0;
      for (size_t l = 0; l < now.size(); ++l) {
        if (!(snapshot_[l] > 0)) continue;  // a layer with no gradient yet says nothing
        const double n = static_cast<double>(sizes_[l]);
        moved += n * std::abs(static_cast<double>(now[l]) / snapshot_[l] - 1.0);
        weight += n;
      }
      movement_ = weight > 0 ? moved / weight : 0.0;
      freeze = movement_ <= o_.tolerance && t >= o_.min_steps;
    }
    snapshot_ = std::move(now);
    snapshot_step_ = t;
  }
  if (freeze) freeze_step_ = t;
  return freeze;
}

void FreezeSchedule::save(std::map<std::string, std::vector<float>>& tensors,
                          std::map<std::string, int64_t>& counters) const {
  if (!automatic_) return;
  counters["auto_freeze_step"] = freeze_step_;
  counters["auto_snapshot_step"] = snapshot_step_;
  tensors["auto_snapshot"] = snapshot_;
  tensors["auto_movement"] = {static_cast<float>(movement_)};
}

void FreezeSchedule::load(const std::map<std::string, std::vector<float>>& tensors,
                          const std::map<std::string, int64_t>& counters, const std::string& who) {
  const auto decided = counters.find("auto_freeze_step");
  ONEBIT_CHECK(automatic_ == (decided != counters.end()),
               who << " load_state: the state was saved with freeze_step "
                   << (decided != counters.end() ? "auto" : "given") << ", this optimizer has it "
                   << (automatic_ ? "auto" : "given"));
  if (!automatic_) return;
  const auto snap = tensors.find("auto_snapshot");
  const auto at = counters.find("auto_snapshot_step");
  const auto moved = tensors.find("auto_movement");
  ONEBIT_CHECK(snap != tensors.end() && at != counters.end() && moved != tensors.end() && moved->second.size() == 1 &&
                   (snap->second.empty() || snap->second.size() == sizes_.size()),
               who << " load_state: the automatic freeze state is missing or not one value per layer");
  freeze_step_ = decided->second;
  snapshot_step_ = at->second;
  snapshot_ = snap->second;
  movement_ = moved->second[0];
}

}  // namespace onebit
