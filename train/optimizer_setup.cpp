// The trainer's optimizer and its dead parameters (see optimizer_setup.hpp).
#include "train/optimizer_setup.hpp"

#include "onebit/optimizer_registry.hpp"
#include "train/model.hpp"

namespace onebit::train {

std::unique_ptr<TorchOptimizer> make_optimizer(const TrainOptions& o, const std::vector<at::Tensor>& params,
                                               std::shared_ptr<Communicator> comm, int threads) {
  const OptimizerKind& kind = optimizer_kind(o.optimizer);
  // The command line's settings, each where the optimizer has it; -1 (auto) and 0 (freeze step
  // auto) leave the optimizer's own default.
  OptionValues v{{"lr", o.lr}, {"beta2", o.beta2}, {"weight_decay", o.weight_decay}, {"threads", static_cast<double>(threads)},
                 {"warmup_exchange", o.warmup_exchange}};
  if (kind.has_option("freeze_step")) {
    v["freeze_step"] = static_cast<double>(o.freeze_step);
    const AutoFreezeOptions a = auto_freeze_options(o);
    v["auto_min_steps"] = static_cast<double>(a.min_steps);
    v["auto_max_steps"] = static_cast<double>(a.max_steps);
    v["auto_window"] = static_cast<double>(a.window);
    v["auto_tolerance"] = a.tolerance;
  }
  for (const auto& [key, value] : {std::pair{"refresh_interval", o.refresh_interval},
                                   {"track_scales", o.track_scales}, {"scale_group", o.scale_group}})
    if (value != -1 && kind.has_option(key)) v[key] = static_cast<double>(value);
  return std::make_unique<TorchOptimizer>(params, kind.parse(v), std::move(comm));
}

namespace {
// The first row of parameter `name` that never gets a gradient, or -1 when every row may.
int64_t first_dead_row(const std::string& name, int seq) {
  if (name == kPositionTable) return seq;
  if (name == kTokenTypeTable) return 1;
  if (name.ends_with(kKeyBiasSuffix)) return 0;
  return -1;
}
}  // namespace

int set_momentum_masks(TorchOptimizer& opt, const std::vector<std::string>& names, int seq) {
  if (!opt.kind().momentum_mask) return 0;
  int masked = 0;
  for (size_t i = 0; i < names.size(); ++i) {
    const int64_t first_dead = first_dead_row(names[i], seq);
    const at::Tensor& p = opt.flat().tensors()[i];
    if (first_dead < 0 || first_dead >= p.size(0)) continue;
    at::Tensor mask = torch::ones(p.sizes(), torch::kFloat);
    mask.slice(0, first_dead).zero_();
    opt.set_momentum_mask(i, mask);
    ++masked;
  }
  return masked;
}

DeadParameters::DeadParameters(TorchOptimizer& opt, const std::vector<std::string>& names, int seq) {
  if (!opt.kind().compresses || opt.kind().momentum_mask) return;  // exact zeros stay zero
  const at::Tensor w = opt.flat().params();
  for (size_t i = 0; i < names.size(); ++i) {
    const int64_t first_dead = first_dead_row(names[i], seq);
    const at::Tensor& p = opt.flat().tensors()[i];
    if (first_dead < 0 || first_dead >= p.size(0)) continue;
    const int64_t row = p.numel() / p.size(0);
    const auto offset = static_cast<int64_t>(opt.flat().layout()[i].offset);
    const int64_t begin = offset + first_dead * row, end = offset + static_cast<int64_t>(opt.flat().layout()[i].size);
    regions_.emplace_back(begin, w.slice(0, begin, end).clone());
  }
}

void DeadParameters::restore(TorchOptimizer& opt) const {
  if (regions_.empty()) return;
  torch::NoGradGuard no_grad;
  const at::Tensor w = opt.flat().params();
  for (const auto& [offset, values] : regions_) w.slice(0, offset, offset + values.numel()).copy_(values);
  opt.flat().write_back();
}

size_t DeadParameters::elements() const {
  size_t n = 0;
  for (const auto& r : regions_) n += static_cast<size_t>(r.second.numel());
  return n;
}

}  // namespace onebit::train
