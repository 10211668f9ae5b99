// libtorch optimizers over onebit's core (TorchOptimizer, and TorchLamb, TorchOnebitLamb, TorchOnebitAdam): used like
// torch::optim optimizers, with the parameters moved into one flat fp32 buffer they become views of,
// on the CPU or (builds with CUDA) on the parameters' GPU, where the step runs onebit's CUDA cores.
#pragma once
#include <torch/optim/optimizer.h>
#include <torch/serialize/archive.h>

#include <memory>
#include <span>
#include <vector>

#include "onebit/communicator.hpp"
#include "onebit/flat_layout.hpp"
#include "onebit/optimizer_registry.hpp"
#include "onebit/optimizers.hpp"

namespace onebit {

namespace torch_cuda {
class DeviceStream;
}
class BackwardOverlap;

// What overlapping one step's exchange with backward did (TorchOptimizer::finish_overlap).
struct OverlapReport {
  int buckets = 0;               // the step's exchange, in this many pieces
  int started_in_backward = 0;   // of them, started while backward ran
  double exchange_seconds = 0;   // the exchange's own time, all buckets
  double waited_seconds = 0;     // the time finish_overlap waited for it, after backward
  // The part of the exchange that backward's computing hid.
  double hidden_seconds() const { return exchange_seconds > waited_seconds ? exchange_seconds - waited_seconds : 0.0; }
};

// The parameters of one optimizer in one flat fp32 buffer, and their gradients in another, on the
// CPU or, in builds with CUDA, on the GPU that holds the parameters (all on the same one; a mix of
// devices is an error). fp32 parameters on the buffers' device become views into the flat buffer
// (param.set_data), and their .grad views into the flat gradient, so neither is ever copied. Other
// parameters (fp16, bf16; on a GPU in builds without CUDA) keep their own storage: the flat buffer
// holds their fp32 master copy, their gradients are converted into the flat gradient and the
// updated weights are written back after each step.
class TorchFlatParams {
 public:
  explicit TorchFlatParams(std::vector<at::Tensor> params);

  const FlatLayout& layout() const { return layout_; }
  const std::vector<at::Tensor>& tensors() const { return params_; }
  const at::Tensor& params() const { return flat_; }
  const at::Tensor& grads() const { return grad_; }
  // Where the flat buffers live: the CPU, or a CUDA device.
  c10::Device device() const { return flat_.device(); }
  // The flat buffers as host spans: an error when they live on a GPU (use params() and grads()).
  std::span<float> param_span() { return host_span(flat_, "param_span"); }
  std::span<float> grad_span() { return host_span(grad_, "grad_span"); }
  // True when tensor i is a view into the flat buffer (fp32 on the buffers' device).
  bool is_view(size_t i) const { return view_[i]; }
  bool all_views() const;

  // Brings every .grad into grads(): nothing to do for a .grad that is still its view; another
  // tensor (the user replaced it, or zero_grad set it to None) is copied in and the view restored;
  // an undefined .grad counts as zero.
  void gather_grads();
  // The same for parameter i alone.
  void gather_grad(size_t i);
  // Writes the flat fp32 weights into the parameters that are not views.
  void write_back();
  // Zeroes all gradients in one pass and keeps the .grad views (set_to_none is not honoured:
  // a None .grad would cost a copy on the next step).
  void zero_grad();

 private:
  at::Tensor flat_view(const at::Tensor& flat, size_t i) const;
  bool grad_is_view(size_t i) const;
  std::span<float> host_span(const at::Tensor& flat, const char* what) const;

  std::vector<at::Tensor> params_;
  std::vector<bool> view_;
  FlatLayout layout_;
  at::Tensor flat_, grad_;
};

// The torch::optim options of a onebit optimizer: only the learning rate, which LR schedulers
// change through get_lr/set_lr. Every other setting is fixed at construction (the core options).
struct TorchOnebitOptions : torch::optim::OptimizerCloneableOptions<TorchOnebitOptions> {
  explicit TorchOnebitOptions(double lr = 1e-3) : lr(lr) {}
  double get_lr() const override { return lr; }
  void set_lr(const double value) override { lr = value; }
  double lr;
};

// A torch::optim optimizer over one of onebit's optimizers (any entry of the registry,
// onebit/optimizer_registry.hpp): one parameter group, one core optimizer, one communicator.
class TorchOptimizer : public torch::optim::Optimizer {
 public:
  // comm: nullptr means world size 1. With the parameters on a GPU, comm may take device memory
  // (NCCL, c10d over NCCL) or host memory (staged through pinned buffers); on the CPU, host memory.
  // The core runs where the parameters are: the CPU optimizer, or its CUDA twin.
  TorchOptimizer(std::vector<at::Tensor> params, const AnyOptions& options,
                 std::shared_ptr<Communicator> comm = nullptr);
  ~TorchOptimizer() override;

  // Overlap with backward: from now on, a step whose exchange is the average of the gradient alone
  // (LAMB's steps; the warmup's) may exchange it in buckets of about bucket_bytes, taken from the
  // last parameter back, each started on a thread of its own as soon as backward has produced its
  // gradients (autograd hooks, as DDP's). Each bucket's average has the bits the step's own
  // exchange gives it. CPU parameters, and a communicator any thread may call (not MPI's).
  void enable_overlap(size_t bucket_bytes = size_t{4} << 20);
  // Before the backward whose gradients the next step takes (the last micro-batch's): lets its
  // buckets start during it, and that backward returns once all are exchanged, with the average
  // over the ranks in the gradients (.grad included), to read or clip before step(), which then
  // exchanges nothing. False when overlap is off or the next step cannot overlap (a compression or
  // refresh step): then nothing is armed, and step() exchanges as usual.
  bool arm_overlap();
  // Takes the arming back, before the backward it was for (a micro-batch that is not the last).
  void disarm_overlap();
  // Finishes an armed exchange whose backward never ran (step() does it too), and returns the
  // report of the exchange finished since the last call; empty when there was none.
  OverlapReport finish_overlap();

  // Gathers the gradients, runs the core step (which does all communication) and writes back.
  // closure, if given, is called first (under grad mode) and its loss returned.
  at::Tensor step(LossClosure closure = nullptr) override;
  // False when the last step was skipped because some rank's gradient was not finite.
  bool last_step_applied() const { return last_applied_; }
  // Hides torch::optim::Optimizer::zero_grad: zeroes the flat gradient, keeping the views.
  void zero_grad(bool set_to_none = false);
  // docs/algorithm.md §4 momentum mask for parameter `index` (0/1, the parameter's shape); undefined removes it.
  // An error unless the optimizer has masks (its registry entry's momentum_mask).
  void set_momentum_mask(size_t index, const at::Tensor& mask);

  // The complete state (the core's, this rank's error buffers included, plus the fp32 master
  // weights when some parameters are not views) and its torch serialization.
  OptimizerState state() const;
  // on_resize: see onebit::load_state; returns its warning ("" when nothing was reset).
  std::string load_state(const OptimizerState& s, OnResize on_resize = OnResize::kError);
  void save(torch::serialize::OutputArchive& archive) const override;
  void load(torch::serialize::InputArchive& archive) override;
  std::string load(torch::serialize::InputArchive& archive, OnResize on_resize);

  const OptimizerKind& kind() const { return *kind_; }
  onebit::Optimizer& core() { return *core_; }
  const onebit::Optimizer& core() const { return *core_; }
  TorchFlatParams& flat() { return flat_; }
  Communicator& comm() { return *comm_; }

 private:
  const OptimizerKind* kind_;
  std::shared_ptr<Communicator> comm_;
  TorchFlatParams flat_;
  std::shared_ptr<torch_cuda::DeviceStream> device_;  // the core's stream; null on the CPU
  std::unique_ptr<onebit::Optimizer> core_;           // declared after device_: destroyed first
  std::unique_ptr<BackwardOverlap> overlap_;          // declared after core_ and flat_: destroyed first
  bool last_applied_ = true;
};

// The registry's optimizers by their C++ option types, for callers that name one.
class TorchLamb : public TorchOptimizer {
 public:
  TorchLamb(std::vector<at::Tensor> params, LambOptions options = {}, std::shared_ptr<Communicator> comm = nullptr)
      : TorchOptimizer(std::move(params), options, std::move(comm)) {}
};

class TorchOnebitLamb : public TorchOptimizer {
 public:
  TorchOnebitLamb(std::vector<at::Tensor> params, OnebitLambOptions options,
                  std::shared_ptr<Communicator> comm = nullptr)
      : TorchOptimizer(std::move(params), options, std::move(comm)) {}
};

class TorchOnebitAdam : public TorchOptimizer {
 public:
  TorchOnebitAdam(std::vector<at::Tensor> params, OnebitAdamOptions options,
                  std::shared_ptr<Communicator> comm = nullptr)
      : TorchOptimizer(std::move(params), options, std::move(comm)) {}
};

}  // namespace onebit
