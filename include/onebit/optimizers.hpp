// Lamb, OnebitLamb and OnebitAdam over a FlatLayout (docs/algorithm.md §3-§5). They own all
// communication: hand them this rank's local gradient and they average it (warmup) or compress
// the momentum.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "onebit/aligned.hpp"
#include "onebit/communicator.hpp"
#include "onebit/compressed_allreduce.hpp"
#include "onebit/flat_layout.hpp"
#include "onebit/freeze_schedule.hpp"
#include "onebit/half_allreduce.hpp"
#include "onebit/kernels.hpp"
#include "onebit/thread_pool.hpp"

namespace onebit {

struct LambOptions {
  float lr = 1e-3f;            // learning rate (change it between steps with set_lr)
  float beta1 = 0.9f;          // momentum decay, in [0, 1)
  float beta2 = 0.999f;        // second-moment decay, in [0, 1)
  float eps = 1e-8f;           // added to sqrt(v), > 0
  float weight_decay = 0.0f;   // decoupled: u += weight_decay * w, >= 0
  float max_coeff = 10.0f;     // upper clip of the trust ratio ||w|| / ||u||
  float min_coeff = 0.01f;     // lower clip of the trust ratio
  int threads = 1;             // CPU threads for the kernels on this rank
  // The gradient exchange of LAMB and of the warmup: fp32, or bf16/fp16 (half the bytes,
  // docs/algorithm.md §11).
  WirePrecision warmup_exchange = WirePrecision::kFp32;
};

// An option of OnebitLambOptions that is on with freeze_step = kAutoFreeze and off otherwise.
inline constexpr int kWithAutoFreeze = -1;
inline constexpr int64_t kAutoRefreshInterval = 16;
inline constexpr int64_t kAutoScaleGroup = 2048;

struct OnebitLambOptions : LambOptions {
  // >= 1: steps 1..freeze_step are LAMB warmup (docs/algorithm.md §4); or kAutoFreeze.
  int64_t freeze_step = kAutoFreeze;
  AutoFreezeOptions auto_freeze{};  // used only with freeze_step = kAutoFreeze
  float coeff_beta = 0.9f;         // decay of the frozen trust-ratio average c_freeze
  float factor_max = 4.0f;         // upper clip of the variance-change factor
  float factor_min = 0.5f;         // lower clip of the variance-change factor
  float factor_threshold = 0.1f;   // the factor moves at most this fraction per step
  // Past the paper (docs/algorithm.md §10). kWithAutoFreeze: on with freeze_step = kAutoFreeze, off
  // with a given freeze step, so a given step with default options is docs/algorithm.md §4 exactly.
  // An uncompressed refresh refresh_interval steps after the freeze, then after intervals that
  // double (R, 3R, 7R, ... steps after it; 0: none): every rank's error-compensated momentum is
  // averaged in the warmup exchange's precision (fp32 unless warmup_exchange says otherwise), so
  // the momentum is exact up to that rounding, the errors restart at zero, and k and the trust
  // ratios are measured afresh; between refreshes the trust ratio is held (no variance factor).
  // kWithAutoFreeze means kAutoRefreshInterval.
  int64_t refresh_interval = kWithAutoFreeze;
  // 1: k follows each layer's gradient RMS every compression step (one fp32 all-reduce of a value
  // per layer); 0: k is set once, at the first compression step (docs/algorithm.md §4 step 1).
  int track_scales = kWithAutoFreeze;
  // Elements per compression scale (docs/algorithm.md §12): 0 is §2 (one scale per worker, one per
  // server chunk); a positive multiple of 64 gives every group of that many elements of each
  // chunk its own worker and server scale, for 4 bytes per group more on the wire.
  // kWithAutoFreeze means kAutoScaleGroup.
  int64_t scale_group = kWithAutoFreeze;
};

struct OnebitAdamOptions {
  float lr = 1e-3f;            // learning rate
  float beta1 = 0.9f;          // in [0, 1)
  float beta2 = 0.999f;        // in [0, 1)
  float eps = 1e-8f;           // > 0
  float weight_decay = 0.0f;   // >= 0
  int64_t freeze_step = kAutoFreeze;  // >= 1: steps 1..freeze_step are Adam warmup; or kAutoFreeze
  AutoFreezeOptions auto_freeze{};  // used only with freeze_step = kAutoFreeze
  int threads = 1;             // CPU threads for the kernels on this rank
  WirePrecision warmup_exchange = WirePrecision::kFp32;  // the warmup's gradient exchange
  int64_t scale_group = 0;     // elements per compression scale, as OnebitLambOptions::scale_group (0: §2)
};

// Everything an optimizer needs to continue bit for bit, this rank's error buffers included.
struct OptimizerState {
  std::map<std::string, std::vector<float>> tensors;
  std::map<std::string, int64_t> counters;
};

// What loading a state saved by a different number of ranks does. The error buffers are per rank
// and sized by the world, so they cannot carry over; everything else is the same on every rank.
enum class OnResize {
  kError,        // refuse, naming both world sizes (the default everywhere)
  kResetErrors,  // continue with the error buffers at zero: no longer bit for bit, but sound
};

// What every optimizer is, on any device: the interface callers use (the trainer, the torch bridge,
// checkpoints), the layout and communicator it was built for, and its step counts.
class Optimizer {
 public:
  Optimizer(const FlatLayout& layout, Communicator& comm) : layout_(layout), comm_(comm) {}
  virtual ~Optimizer() = default;

  // One step. params: the flat parameter buffer; grads: this rank's local gradient, which may be
  // overwritten. Returns false when the step was skipped because some rank's gradient held a NaN
  // or infinity: all ranks skip together and nothing changes but the skip count.
  virtual bool step(std::span<float> params, std::span<float> grads) = 0;
  virtual OptimizerState state() const = 0;
  virtual void load_state(const OptimizerState& s) = 0;
  virtual std::string name() const = 0;
  // True while the next step exchanges uncompressed gradients.
  virtual bool in_warmup() const { return true; }
  // What the next step exchanges: "fp32" (an optimizer that never compresses), "warmup",
  // "compression" or "refresh" (1-bit LAMB's uncompressed refresh, see refresh_interval).
  virtual const char* next_stage() const { return "fp32"; }
  // The last warmup step: given, or decided by freeze_step = auto (kAutoFreeze while undecided);
  // -1 for an optimizer that never compresses.
  virtual int64_t freeze_step() const { return -1; }

  virtual void set_lr(float lr) = 0;
  // Per layer, the multiple of lr the last applied step moved it by (LAMB's trust ratio; 1-bit
  // LAMB's c_freeze x factor in compression); empty where the optimizer has none. For reports.
  virtual std::vector<float> layer_trust() const { return {}; }
  // docs/algorithm.md §4 momentum mask: a 0/1 mask over layer `layer`'s elements, applied after every
  // compressed exchange; an empty span removes it. An error for an optimizer without it (its
  // registry entry says momentum_mask = false).
  virtual void set_momentum_mask(size_t layer, std::span<const float> mask);
  // Overlap with backward: true when the next step's exchange is the average of the gradient alone
  // (LAMB's steps, the warmup's), which may then run ahead of step(), in pieces, as backward
  // produces the gradients. False for a compression or refresh step, and on a GPU.
  virtual bool averages_gradient() const { return false; }
  // Averages grads[first, last) over the ranks now, on behalf of the next step, which then averages
  // nothing. Every rank gives the same ranges in the same order, and together they cover the buffer
  // once before that step. An error unless averages_gradient(). Any thread may call it, while no
  // other call to this optimizer runs.
  virtual void average_ahead(std::span<float> grads, size_t first, size_t last);
  int64_t steps() const { return step_; }
  int64_t skipped() const { return skipped_; }
  const FlatLayout& layout() const { return layout_; }
  Communicator& comm() { return comm_; }

 protected:
  void check_sizes(std::span<float> params, std::span<float> grads) const;
  void save_common(OptimizerState& s) const;
  void load_common(const OptimizerState& s);

  FlatLayout layout_;
  Communicator& comm_;
  int64_t step_ = 0, skipped_ = 0;
};

// The CPU optimizers' shared machinery: a thread pool for the kernels, the partition of the flat
// buffer, the warmup exchange and LAMB's trust ratios.
class CpuOptimizer : public Optimizer {
 public:
  CpuOptimizer(const FlatLayout& layout, Communicator& comm, int threads,
               WirePrecision warmup_exchange = WirePrecision::kFp32);
  void average_ahead(std::span<float> grads, size_t first, size_t last) override;

 protected:
  // Allreduce-average of the gradients (the warmup exchange), in the warmup_exchange precision;
  // nothing when average_ahead has done it.
  void average_gradients(std::span<float> grads);
  // The exchange itself: x averaged over the ranks in the warmup_exchange precision.
  void exchange_average(std::span<float> x);
  // Fills the per-layer LAMB trust ratios; false if the gradient was not finite.
  bool lamb_ratios(const float* g, const float* m, const float* v, const float* w,
                   const kernels::MomentParams& p, float min_coeff, float max_coeff,
                   std::vector<double>& ratio);
  // The compression stage's d = sqrt(v) + eps, filled on its first call: v is frozen from then on.
  void freeze_denominator(AlignedVector<float>& d, std::span<const float> v, float eps);

  mutable ThreadPool pool_;  // mutable: const readers (state()) run kernels too
  kernels::Partition part_;
  std::vector<double> w_sq_, u_sq_;  // per-layer scratch
  std::unique_ptr<HalfAllreduce> half_;  // a 16-bit warmup exchange; null for fp32
  size_t averaged_ahead_ = 0;            // gradients average_ahead has done for the next step
};

class Lamb : public CpuOptimizer {
 public:
  Lamb(const FlatLayout& layout, Communicator& comm, LambOptions options = {});
  bool step(std::span<float> params, std::span<float> grads) override;
  OptimizerState state() const override;
  void load_state(const OptimizerState& s) override;
  std::string name() const override { return "lamb"; }
  bool averages_gradient() const override { return true; }
  void set_lr(float lr) override { opt_.lr = lr; }
  const LambOptions& options() const { return opt_; }
  std::vector<float> layer_trust() const override;

 private:
  LambOptions opt_;
  AlignedVector<float> m_, v_;
  std::vector<float> coef_;
  std::vector<double> ratio_;
};

class OnebitLamb : public CpuOptimizer {
 public:
  OnebitLamb(const FlatLayout& layout, Communicator& comm, OnebitLambOptions options);
  bool step(std::span<float> params, std::span<float> grads) override;
  OptimizerState state() const override;
  void load_state(const OptimizerState& s) override;
  std::string name() const override { return "onebit-lamb"; }
  bool in_warmup() const override { return freeze_.in_warmup(step_); }
  bool averages_gradient() const override { return in_warmup(); }
  const char* next_stage() const override { return in_warmup() ? "warmup" : refresh_due() ? "refresh" : "compression"; }
  int64_t freeze_step() const override { return freeze_.freeze_step(); }
  void set_lr(float lr) override { opt_.lr = lr; }
  const OnebitLambOptions& options() const { return opt_; }
  int64_t refreshes() const { return refreshes_; }
  const FreezeSchedule& freeze_schedule() const { return freeze_; }

  void set_momentum_mask(size_t layer, std::span<const float> mask) override;

  // Per-layer state, for tests and reports.
  const std::vector<float>& c_freeze() const { return c_freeze_; }
  const std::vector<float>& last_factor() const { return last_factor_; }
  const std::vector<float>& k() const { return k_; }
  // Per layer, the factor of the last compression step before its clamps (docs/algorithm.md §4 step 8).
  const std::vector<float>& raw_factor() const { return max_ratio_; }
  std::vector<float> layer_trust() const override;

 private:
  bool warmup_step(std::span<float> w, std::span<float> g);
  bool compression_step(std::span<float> w, std::span<float> g);
  bool refresh_due() const;
  bool refresh_step(std::span<float> w, std::span<float> g);
  bool track_scales(std::span<const float> g);
  void init_momentum_scale();
  kernels::Momentum signs(const uint8_t* bits, const float* scales) const;
  kernels::Momentum momentum() const;  // the synchronized momentum, wherever it lives now

  OnebitLambOptions opt_;
  FreezeSchedule freeze_;
  CompressedAllreduce allreduce_;
  // The momentum lives in m_ through the warmup, the first compression step and a load; after a
  // compressed exchange it is that exchange's result (allreduce_.bits()), and m_ is released.
  bool m_in_signs_ = false;
  AlignedVector<float> m_, v_, v_fresh_;
  AlignedVector<float> d_;  // sqrt(v) + eps over the frozen v, from the first compression step on
  std::vector<float> coef_;
  std::vector<float> c_freeze_, last_factor_, k_;
  std::vector<std::vector<float>> masks_;
  std::vector<const float*> mask_ptrs_;
  std::vector<double> ratio_, u0_sq_;
  std::vector<float> max_ratio_;
  std::vector<float> k_prev_;  // the k of the exchange before (track_scales changes k every step)
  std::vector<float> g_rms_;   // track_scales: each layer's smoothed gradient RMS (fp32: saved exactly)
  int64_t refreshes_ = 0;
};

class OnebitAdam : public CpuOptimizer {
 public:
  OnebitAdam(const FlatLayout& layout, Communicator& comm, OnebitAdamOptions options);
  bool step(std::span<float> params, std::span<float> grads) override;
  OptimizerState state() const override;
  void load_state(const OptimizerState& s) override;
  std::string name() const override { return "onebit-adam"; }
  bool in_warmup() const override { return freeze_.in_warmup(step_); }
  bool averages_gradient() const override { return in_warmup(); }
  const char* next_stage() const override { return in_warmup() ? "warmup" : "compression"; }
  int64_t freeze_step() const override { return freeze_.freeze_step(); }
  void set_lr(float lr) override { opt_.lr = lr; }

 private:
  kernels::Momentum momentum() const;

  OnebitAdamOptions opt_;
  FreezeSchedule freeze_;
  CompressedAllreduce allreduce_;
  bool m_in_signs_ = false;  // as in OnebitLamb
  AlignedVector<float> m_, v_, d_;  // d_ as in OnebitLamb
  std::vector<float> coef_;
};

// Loads `s` into `opt`, which may run on a different number of ranks than the one that saved `s`
// only with OnResize::kResetErrors (any rank's state will do then). Returns a warning for the user
// when error buffers were reset, else an empty string.
[[nodiscard]] std::string load_state(Optimizer& opt, const OptimizerState& s, OnResize on_resize);

}  // namespace onebit
