// When the 1-bit optimizers stop the uncompressed warmup: at a given step (docs/algorithm.md §4), or with
// freeze_step = kAutoFreeze once the second moment has stabilised (docs/algorithm.md, "Choosing the
// freeze step"). The automatic decision is a pure function of v, which every rank holds bit for bit
// in warmup, so every rank decides the same step without a message; it is saved state.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "onebit/flat_layout.hpp"
#include "onebit/kernels.hpp"
#include "onebit/thread_pool.hpp"

namespace onebit {

// freeze_step = kAutoFreeze: the warmup ends when the second moment has stabilised.
inline constexpr int64_t kAutoFreeze = 0;

// The warmup budget `onebit train` gives kAutoFreeze: at the latest once the warmup has sent the
// bytes of this fraction of the run's steps in fp32 exchanges: 20% of the steps with an fp32 warmup
// exchange, 40% with a 16-bit one. The whole-run volume against fp32 LAMB is then at least
// 1/(0.2 + (1-w)/32) = 4.4x (w, the warmup's share of the steps: 0.2 or 0.4).
inline constexpr double kAutoFreezeCeilingFraction = 0.2;
// The warmup's share of the steps under that budget, for an exchange of `bytes_per_element`.
inline constexpr double auto_freeze_ceiling_fraction(double bytes_per_element) {
  return kAutoFreezeCeilingFraction * 4 / bytes_per_element;
}

// How kAutoFreeze decides. Every `window` steps it measures each layer's RMS of v / (1 - beta2^t)
// (v with its zero start divided out: an estimate of E[g^2]) and freezes at the first window end,
// at or after min_steps, where those moved by at most `tolerance` since the window before (relative
// change, averaged over the layers weighted by their sizes). At max_steps it freezes regardless.
struct AutoFreezeOptions {
  int64_t min_steps = 10;     // floor of the warmup, >= 1
  int64_t max_steps = 1000;   // ceiling of the warmup, >= min_steps (the paper's BERT warmup)
  int64_t window = 10;        // steps between two measurements, >= 1
  double tolerance = 0.05;    // in (0, 1)
};

class FreezeSchedule {
 public:
  FreezeSchedule(int64_t freeze_step, const AutoFreezeOptions& auto_options, const FlatLayout& layout);

  // True while step `done_steps` + 1 is a warmup step.
  bool in_warmup(int64_t done_steps) const { return freeze_step_ == kAutoFreeze || done_steps < freeze_step_; }
  // After warmup step t (1-based) has updated v: true when t is the last warmup step.
  bool after_warmup_step(int64_t t, const float* v, float beta2, const kernels::Partition& part, ThreadPool& pool);
  // The same in two halves, for v that lives elsewhere (the GPU): whether step t's decision reads v,
  // and then the decision from v's per-layer sums of squares (kernels::layer_sq_norms; read only
  // when measures(t)).
  bool measures(int64_t t) const;
  bool after_warmup_step(int64_t t, const double* v_sq, float beta2);

  // The last warmup step: the given one, or the decided one; kAutoFreeze while undecided.
  int64_t freeze_step() const { return freeze_step_; }
  // The movement measured at the last window's end (see AutoFreezeOptions); NaN before the second.
  double last_movement() const { return movement_; }

  // Checkpoint state (no entries with a given freeze step).
  void save(std::map<std::string, std::vector<float>>& tensors, std::map<std::string, int64_t>& counters) const;
  void load(const std::map<std::string, std::vector<float>>& tensors, const std::map<std::string, int64_t>& counters,
            const std::string& who);

 private:
  bool automatic_;
  int64_t freeze_step_;
  AutoFreezeOptions o_;
  std::vector<int64_t> sizes_;   // layer sizes
  std::vector<double> v_sq_;     // scratch: per-layer sum of v^2 (the host's v)
  std::vector<float> snapshot_;  // per-layer measure at snapshot_step_ (fp32, so a checkpoint holds it exactly)
  int64_t snapshot_step_ = 0;
  double movement_;
};

}  // namespace onebit
