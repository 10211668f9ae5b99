// Lamb / OnebitLamb / OnebitAdam (§3-§5) with state and math on the GPU: the same results as
// optimizers.hpp, bit for bit, and the same checkpoint tensors, so a run can move between CPU and
// GPU. Works over any Communicator: NCCL (device memory, stream-ordered) or a host backend, through
// pinned staging buffers. The compressed allreduce they use (docs/algorithm.md §2) is
// onebit/cuda_compressed_allreduce.hpp, included here.
#pragma once
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "onebit/cuda_compressed_allreduce.hpp"
#include "onebit/cuda_kernels.hpp"
#include "onebit/freeze_schedule.hpp"
#include "onebit/optimizer_registry.hpp"
#include "onebit/optimizers.hpp"

typedef struct CUevent_st* cudaEvent_t;

namespace onebit::cuda {

class DeviceCollectives;  // comm/cuda/device_collectives.hpp
class CudaHalfAllreduce;  // comm/cuda/cuda_half_allreduce.hpp
struct LambCoefArgs;      // kernels/cuda/launchers.hpp

// The Optimizer interface on device buffers: step(params, grads) takes spans over device memory,
// waits for the step and says whether it was applied. step_async() only enqueues; the outcome is
// folded in (steps(), skipped(), the error feedback's buffers) by the next call that changes the
// optimizer (sync(), step_async(), load_state(), ...), so a training loop that does not look at the
// result never waits for the GPU. state(), const in the Optimizer interface, waits for a step in
// flight and reports the state after it, but leaves folding it in to the next sync().
class CudaOptimizer : public Optimizer {
 public:
  // warmup_exchange: the precision of average_gradients' exchange (docs/algorithm.md §11).
  CudaOptimizer(const FlatLayout& layout, Communicator& comm, Stream stream,
                WirePrecision warmup_exchange = WirePrecision::kFp32);
  ~CudaOptimizer() override;

  bool step(std::span<float> params, std::span<float> grads) final;
  void step_async(float* params, float* grads);
  // Waits for the step in flight (within the communicator's timeout); returns whether the last step
  // was applied.
  bool sync();
  Stream stream() const { return stream_; }

 protected:
  // Enqueues one step on stream(); a non-finite gradient sets skip() on the device.
  virtual void enqueue(float* w, float* g) = 0;
  // Host bookkeeping once a step is known to be applied (called before step_ advances).
  virtual void applied() {}

  // A step as a const reader sees it. in_flight: enqueued and not yet folded in by sync(); applied:
  // whether that step (or, with none in flight, the last one) was applied.
  struct Outcome {
    bool in_flight = false;
    bool applied = true;
  };
  // Waits for the step in flight, if any, and says how it went, changing nothing: sync() folds it
  // in, and state() (const) reports it.
  Outcome outcome() const;
  // save_common(s), counting a step in flight as applied or skipped, as sync() will count it.
  void save_counters(OptimizerState& s, const Outcome& o) const;

  // The cross-rank check of optim/options.hpp: settings are (name, value) pairs.
  void check_agreement(const std::vector<std::pair<const char*, double>>& settings);
  // The warmup exchange: g (the whole layout) averaged over the ranks in the warmup_exchange precision.
  void average_gradients(float* g);
  // The exchange itself, on x[0, n) (device memory): fp32 allreduce and divide, or the 16-bit
  // exchange, whose bits do not depend on how a buffer is cut into calls.
  void exchange_average(float* x, size_t n);
  void lamb_pass(float* w, float* g, float* m, float* v, const kernels::MomentParams& p,
                 const LambCoefArgs& coef_args);
  std::vector<float> download(const DeviceArray<float>& a) const;
  // The momentum m written out and downloaded, after the work on the stream.
  std::vector<float> decoded(const DevicePartition& part, const kernels::Momentum& m) const;
  // For derived destructors: their buffers go before this class's destructor could wait.
  void drain() noexcept;
  void upload(DeviceArray<float>& a, const OptimizerState& s, const char* key, size_t n);
  int* skip() const { return skip_.data(); }

  Stream stream_;
  std::unique_ptr<DeviceCollectives> coll_;
  DevicePartition dpart_;
  DeviceArray<double> w_sq_, u_sq_;
  DeviceArray<float> coef_;

 private:
  DeviceArray<int> skip_;
  int* host_flag_ = nullptr;  // pinned
  cudaEvent_t done_ = nullptr;
  bool pending_ = false, last_applied_ = true;
  // A 16-bit warmup exchange over *coll_ (declared after it, so it goes first); null for fp32.
  std::unique_ptr<CudaHalfAllreduce> half_;
};

class CudaLamb : public CudaOptimizer {
 public:
  CudaLamb(const FlatLayout& layout, Communicator& comm, Stream stream, LambOptions options = {});
  ~CudaLamb() override { drain(); }
  OptimizerState state() const override;
  void load_state(const OptimizerState& s) override;
  std::string name() const override { return "lamb"; }
  void set_lr(float lr) override { opt_.lr = lr; }

 private:
  void enqueue(float* w, float* g) override;
  LambOptions opt_;
  DeviceArray<float> m_, v_;
};

// The automatic freeze on the device: FreezeSchedule's decision, from v's per-layer sums measured by
// the warmup step that needs them and read back once the step is known to be applied.
class DeviceFreeze {
 public:
  DeviceFreeze(int64_t freeze_step, const AutoFreezeOptions& o, const FlatLayout& layout);
  const FreezeSchedule& schedule() const { return schedule_; }
  FreezeSchedule& schedule() { return schedule_; }
  // In warmup step `t`: measures v if the decision after t reads it.
  void measure(int64_t t, const DevicePartition& part, const float* v, Stream stream, const int* skip);
  // After warmup step t was applied (the stream finished): true when t is the last warmup step.
  bool decide(int64_t t, float beta2);
  // The schedule as decide(t) would leave it, changing nothing (for state() of a step in flight).
  FreezeSchedule after(int64_t t, float beta2) const;

 private:
  // v's per-layer sums for the decision after step t (zeros where t did not measure: not read then).
  std::vector<double> sums_after(int64_t t) const;

  FreezeSchedule schedule_;
  DeviceArray<double> v_sq_;
  int64_t measured_ = 0;  // the step whose v was measured
};

class CudaOnebitLamb : public CudaOptimizer {
 public:
  CudaOnebitLamb(const FlatLayout& layout, Communicator& comm, Stream stream, OnebitLambOptions options);
  ~CudaOnebitLamb() override { drain(); }
  OptimizerState state() const override;
  void load_state(const OptimizerState& s) override;
  std::string name() const override { return "onebit-lamb"; }
  bool in_warmup() const override { return freeze_.schedule().in_warmup(step_); }
  const char* next_stage() const override { return in_warmup() ? "warmup" : refresh_due() ? "refresh" : "compression"; }
  int64_t freeze_step() const override { return freeze_.schedule().freeze_step(); }
  void set_lr(float lr) override { opt_.lr = lr; }
  const OnebitLambOptions& options() const { return opt_; }
  int64_t refreshes() { sync(); return refreshes_; }
  // As OnebitLamb::set_momentum_mask (host mask, copied to the device).
  void set_momentum_mask(size_t layer, std::span<const float> mask) override;
  std::vector<float> c_freeze();
  std::vector<float> last_factor();
  std::vector<float> k();

 private:
  enum class Stage { kWarmup, kCompression, kRefresh };
  void enqueue(float* w, float* g) override;
  void applied() override;
  void warmup(float* w, float* g);
  void compression(float* w, float* g);
  void refresh(float* w, float* g);
  void track_scales(const float* g);
  void init_momentum_scale();
  bool refresh_due() const;
  kernels::Momentum signs(const uint8_t* bits, const float* scales, const float* k) const;
  // The synchronized momentum a reader sees: committed, or as the step in flight leaves it.
  kernels::Momentum momentum(bool in_flight_applied = false) const;

  OnebitLambOptions opt_;
  DeviceFreeze freeze_;
  CudaCompressedAllreduce allreduce_;
  // The momentum lives in m_ through the warmup, the first compression step, a refresh and a load;
  // after a compressed exchange it is that exchange's signs (allreduce_.committed_bits()), read at
  // 1/8 byte per element, as on the CPU. x_ is the refresh's new momentum until it is applied.
  bool m_in_signs_ = false;
  DeviceArray<float> m_, x_, v_, v_fresh_, c_freeze_, last_factor_, k_, k_prev_, g_rms_, g_sum_;
  DeviceArray<double> u0_sq_, m_sq_;
  DeviceArray<float> max_ratio_;
  bool k_ready_ = false, g_rms_ready_ = false;
  Stage stage_ = Stage::kWarmup;  // of the step enqueued last
  int64_t refreshes_ = 0;
  std::vector<DeviceArray<float>> masks_;
  DeviceArray<const float*> mask_ptrs_;
  bool any_mask_ = false;
};

class CudaOnebitAdam : public CudaOptimizer {
 public:
  CudaOnebitAdam(const FlatLayout& layout, Communicator& comm, Stream stream, OnebitAdamOptions options);
  ~CudaOnebitAdam() override { drain(); }
  OptimizerState state() const override;
  void load_state(const OptimizerState& s) override;
  std::string name() const override { return "onebit-adam"; }
  bool in_warmup() const override { return freeze_.schedule().in_warmup(step_); }
  const char* next_stage() const override { return in_warmup() ? "warmup" : "compression"; }
  int64_t freeze_step() const override { return freeze_.schedule().freeze_step(); }
  void set_lr(float lr) override { opt_.lr = lr; }

 private:
  void enqueue(float* w, float* g) override;
  void applied() override;
  kernels::Momentum momentum(bool in_flight_applied = false) const;

  OnebitAdamOptions opt_;
  DeviceFreeze freeze_;
  CudaCompressedAllreduce allreduce_;
  bool m_in_signs_ = false;  // as CudaOnebitLamb's
  DeviceArray<float> m_, v_;
  bool pending_compression_ = false;
};

// The registry's CUDA constructor: the twin of onebit::make_optimizer's optimizer for `options`
// (onebit/optimizer_registry.hpp), on device buffers and `stream`, the same results bit for bit.
std::unique_ptr<Optimizer> make_optimizer(const FlatLayout& layout, Communicator& comm, Stream stream,
                                          const AnyOptions& options);

}  // namespace onebit::cuda
