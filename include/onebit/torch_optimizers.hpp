// libtorch optimizers over onebit's core (TorchLamb, TorchOnebitLamb, TorchOnebitAdam): used like
// torch::optim optimizers, with the parameters moved into one flat fp32 buffer they become views of.
#pragma once
#include <torch/optim/optimizer.h>
#include <torch/serialize/archive.h>

#include <memory>
#include <span>
#include <vector>

#include "onebit/communicator.hpp"
#include "onebit/flat_layout.hpp"
#include "onebit/optimizers.hpp"

namespace onebit {

// The parameters of one optimizer in one flat fp32 CPU buffer, and their gradients in another.
// fp32 CPU parameters become views into the flat buffer (param.set_data), and their .grad views
// into the flat gradient, so neither is ever copied. Other parameters (fp16, bf16, or on a GPU)
// keep their own storage: the flat buffer holds their fp32 master copy, their gradients are
// converted into the flat gradient and the updated weights are written back after each step.
class TorchFlatParams {
 public:
  explicit TorchFlatParams(std::vector<at::Tensor> params);

  const FlatLayout& layout() const { return layout_; }
  const std::vector<at::Tensor>& tensors() const { return params_; }
  const at::Tensor& params() const { return flat_; }
  const at::Tensor& grads() const { return grad_; }
  std::span<float> param_span() { return {flat_.data_ptr<float>(), layout_.total()}; }
  std::span<float> grad_span() { return {grad_.data_ptr<float>(), layout_.total()}; }
  // True when tensor i is a view into the flat buffer (fp32 on the CPU).
  bool is_view(size_t i) const { return view_[i]; }
  bool all_views() const;

  // Brings every .grad into grads(): nothing to do for a .grad that is still its view; another
  // tensor (the user replaced it, or zero_grad set it to None) is copied in and the view restored;
  // an undefined .grad counts as zero.
  void gather_grads();
  // Writes the flat fp32 weights into the parameters that are not views.
  void write_back();
  // Zeroes all gradients in one pass and keeps the .grad views (set_to_none is not honoured:
  // a None .grad would cost a copy on the next step).
  void zero_grad();

 private:
  at::Tensor flat_view(const at::Tensor& flat, size_t i) const;
  bool grad_is_view(size_t i) const;

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

// The shared machinery: one parameter group, one core optimizer, one communicator.
class TorchOptimizer : public torch::optim::Optimizer {
 public:
  // Gathers the gradients, runs the core step (which does all communication) and writes back.
  // closure, if given, is called first (under grad mode) and its loss returned.
  at::Tensor step(LossClosure closure = nullptr) override;
  // False when the last step was skipped because some rank's gradient was not finite.
  bool last_step_applied() const { return last_applied_; }
  // Hides torch::optim::Optimizer::zero_grad: zeroes the flat gradient, keeping the views.
  void zero_grad(bool set_to_none = false);

  // The complete state (the core's, this rank's error buffers included, plus the fp32 master
  // weights when some parameters are not views) and its torch serialization.
  OptimizerState state() const;
  // on_resize: see onebit::load_state; returns its warning ("" when nothing was reset).
  std::string load_state(const OptimizerState& s, OnResize on_resize = OnResize::kError);
  void save(torch::serialize::OutputArchive& archive) const override;
  void load(torch::serialize::InputArchive& archive) override;
  std::string load(torch::serialize::InputArchive& archive, OnResize on_resize);

  onebit::Optimizer& core() { return *core_; }
  const onebit::Optimizer& core() const { return *core_; }
  TorchFlatParams& flat() { return flat_; }
  Communicator& comm() { return *comm_; }

 protected:
  // comm: nullptr means world size 1.
  TorchOptimizer(std::vector<at::Tensor> params, double lr, std::shared_ptr<Communicator> comm);
  void set_core(std::unique_ptr<onebit::Optimizer> core) { core_ = std::move(core); }

  std::shared_ptr<Communicator> comm_;
  TorchFlatParams flat_;
  std::unique_ptr<onebit::Optimizer> core_;
  bool last_applied_ = true;
};

class TorchLamb : public TorchOptimizer {
 public:
  TorchLamb(std::vector<at::Tensor> params, LambOptions options = {},
            std::shared_ptr<Communicator> comm = nullptr);
};

class TorchOnebitLamb : public TorchOptimizer {
 public:
  TorchOnebitLamb(std::vector<at::Tensor> params, OnebitLambOptions options,
                  std::shared_ptr<Communicator> comm = nullptr);
  // Spec §4 momentum mask for parameter `index` (0/1, the parameter's shape); undefined removes it.
  void set_momentum_mask(size_t index, const at::Tensor& mask);
};

class TorchOnebitAdam : public TorchOptimizer {
 public:
  TorchOnebitAdam(std::vector<at::Tensor> params, OnebitAdamOptions options,
                  std::shared_ptr<Communicator> comm = nullptr);
};

}  // namespace onebit
