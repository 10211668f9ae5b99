// The trainer's optimizer: built through the registry from the command line's settings, with the
// momentum masks (or the kept values) of the parameters that never get a gradient.
#pragma once
#include <torch/torch.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "onebit/communicator.hpp"
#include "onebit/torch_optimizers.hpp"
#include "train/options.hpp"

namespace onebit::train {

// The optimizer over `params` (in the order of model->named_parameters()).
std::unique_ptr<TorchOptimizer> make_optimizer(const TrainOptions& o, const std::vector<at::Tensor>& params,
                                               std::shared_ptr<Communicator> comm, int threads);

// docs/algorithm.md §4: rows of the position table at or beyond --seq, token-type rows other than 0 and the key
// biases never get a gradient, and 1-bit compression cannot send an exact zero (with v = 0 such an
// element's update would be m/eps), so 1-bit LAMB masks their momentum. Returns the masked tensors.
int set_momentum_masks(TorchOptimizer& opt, const std::vector<std::string>& names, int seq);

// The same dead parameters for a compressing optimizer without a momentum mask (1-bit Adam; docs/algorithm.md §4
// defines the mask for 1-bit LAMB): without one they drift by about lr*m/eps per step (a key bias
// reached 28 in 40 steps). The trainer keeps their values from the start and puts them back after
// every step, the same on every rank. Empty for the other optimizers.
class DeadParameters {
 public:
  DeadParameters(TorchOptimizer& opt, const std::vector<std::string>& names, int seq);
  void restore(TorchOptimizer& opt) const;
  size_t elements() const;

 private:
  std::vector<std::pair<int64_t, at::Tensor>> regions_;  // flat offset, values (on the buffers' device)
};

}  // namespace onebit::train
