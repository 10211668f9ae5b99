// TorchLamb, TorchOnebitLamb, TorchOnebitAdam: torch::optim optimizers whose step is onebit's core
// optimizer on the flat buffers (its CUDA twin when they are on a GPU), with the complete state in
// torch serialization.
#include <ATen/ATen.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <optional>
#include <sstream>

#include "onebit/error.hpp"
#include "onebit/torch_c10d.hpp"
#include "onebit/torch_optimizers.hpp"
#include "overlap.hpp"
#ifdef ONEBIT_HAVE_CUDA
#include "cuda_bridge.hpp"
#include "onebit/cuda_optimizers.hpp"
#endif

namespace onebit {
namespace {

// One core step on the flat buffers, wherever they live.
bool core_step(Optimizer& core, TorchFlatParams& flat, torch_cuda::DeviceStream* device) {
#ifdef ONEBIT_HAVE_CUDA
  if (device) {
    torch_cuda::DeviceScope scope(device->device());
    device->wait_for_torch();  // the gradients were written on torch's stream (backward, gather_grads)
    const size_t n = flat.layout().total();
    // Synchronous: torch's later work (write_back, the next forward) sees the new weights.
    return core.step({flat.params().data_ptr<float>(), n}, {flat.grads().data_ptr<float>(), n});
  }
#else
  (void)device;
#endif
  return core.step(flat.param_span(), flat.grad_span());
}

constexpr const char* kMaster = "master_params";

std::string join(const std::vector<std::string>& names) {
  std::string s;
  for (const auto& n : names) s += (s.empty() ? "" : ",") + n;
  return s;
}

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream in(s);
  for (std::string item; std::getline(in, item, ',');)
    if (!item.empty()) out.push_back(item);
  return out;
}

std::string read_string(torch::serialize::InputArchive& archive, const std::string& key) {
  c10::IValue v;
  ONEBIT_CHECK(archive.try_read(key, v) && v.isString(),
               "onebit torch optimizer load: the archive has no '" << key << "'");
  return v.toStringRef();
}

}  // namespace

TorchOptimizer::TorchOptimizer(std::vector<at::Tensor> params, const AnyOptions& options,
                               std::shared_ptr<Communicator> comm)
    : torch::optim::Optimizer(params, std::make_unique<TorchOnebitOptions>(lr_of(options))),
      kind_(&optimizer_kind(options)),
      comm_(comm ? std::move(comm) : std::shared_ptr<Communicator>(make_single_rank_communicator())),
      flat_(std::move(params)) {
  ONEBIT_CHECK(!comm_->device_memory() || !flat_.device().is_cpu(),
               "onebit torch optimizer on rank " << comm_->rank() << ": the " << comm_->backend()
                   << " communicator takes device memory but the parameters are on the CPU (over an NCCL "
                      "group, make_c10d_communicator stages host buffers)");
#ifdef ONEBIT_HAVE_CUDA
  if (flat_.device().is_cuda()) {
    device_ = std::make_shared<torch_cuda::DeviceStream>(flat_.device());
    torch_cuda::DeviceScope scope(device_->device());
    core_ = cuda::make_optimizer(flat_.layout(), *comm_, device_->get(), options);
    return;
  }
#endif
  core_ = make_optimizer(flat_.layout(), *comm_, options);
}

TorchOptimizer::~TorchOptimizer() = default;

void TorchOptimizer::enable_overlap(size_t bucket_bytes) {
  const std::string who = std::string(kind_->name) + " overlap on rank " + std::to_string(comm_->rank());
  ONEBIT_CHECK(flat_.device().is_cpu(), who << ": the parameters are on " << flat_.device()
                                            << "; overlap with backward is for CPU parameters");
  ONEBIT_CHECK(comm_->any_thread(), who << ": the " << comm_->backend() << " communicator may be called from "
                                        << "one thread only, and the overlapped exchange runs on its own (use Gloo)");
  overlap_.reset();  // its hooks go before the new ones come
  overlap_ = std::make_unique<BackwardOverlap>(flat_, *core_, bucket_bytes);
}

bool TorchOptimizer::arm_overlap() { return overlap_ && overlap_->arm(); }

void TorchOptimizer::disarm_overlap() {
  if (overlap_) overlap_->disarm();
}

OverlapReport TorchOptimizer::finish_overlap() { return overlap_ ? overlap_->finish() : OverlapReport{}; }

at::Tensor TorchOptimizer::step(LossClosure closure) {
  at::Tensor loss;
  if (closure) {
    at::AutoGradMode grad_mode(true);
    loss = closure();
  }
  at::NoGradGuard no_grad;
  finish_overlap();  // an armed exchange whose backward never ran
  flat_.gather_grads();
  core_->set_lr(static_cast<float>(param_groups().front().options().get_lr()));
  last_applied_ = core_step(*core_, flat_, device_.get());
  if (last_applied_) flat_.write_back();
  return loss;
}

void TorchOptimizer::zero_grad(bool /*set_to_none*/) { flat_.zero_grad(); }

OptimizerState TorchOptimizer::state() const {
  OptimizerState s = core_->state();
  // Parameters that are not views keep fp16/bf16 (or device) copies; their exact fp32 weights
  // live only here, so a resume needs them.
  if (!flat_.all_views()) {
    const at::Tensor host = flat_.params().to(at::kCPU);
    s.tensors[kMaster].assign(host.data_ptr<float>(), host.data_ptr<float>() + flat_.layout().total());
  }
  return s;
}

std::string TorchOptimizer::load_state(const OptimizerState& s, OnResize on_resize) {
  OptimizerState core_state = s;
  auto master = core_state.tensors.find(kMaster);
  if (master != core_state.tensors.end()) {
    ONEBIT_CHECK(master->second.size() == flat_.layout().total(),
                 core_->name() << " load_state: '" << kMaster << "' has " << master->second.size()
                               << " elements, the parameters " << flat_.layout().total());
    std::vector<float> weights = std::move(master->second);
    core_state.tensors.erase(master);
    std::string warning = onebit::load_state(*core_, core_state, on_resize);
    flat_.params().copy_(at::from_blob(weights.data(), {static_cast<int64_t>(weights.size())},
                                       at::TensorOptions().dtype(at::kFloat)));
    flat_.write_back();
    return warning;
  }
  return onebit::load_state(*core_, core_state, on_resize);
}

void TorchOptimizer::save(torch::serialize::OutputArchive& archive) const {
  const OptimizerState s = state();
  std::vector<std::string> tensor_names, counter_names;
  archive.write("onebit_kind", c10::IValue(core_->name()));
  for (const auto& [name, values] : s.tensors) {
    tensor_names.push_back(name);
    at::Tensor t = at::empty({static_cast<int64_t>(values.size())}, at::TensorOptions().dtype(at::kFloat));
    std::copy(values.begin(), values.end(), t.data_ptr<float>());
    archive.write("onebit_t_" + name, t, /*is_buffer=*/true);
  }
  for (const auto& [name, value] : s.counters) {
    counter_names.push_back(name);
    archive.write("onebit_c_" + name, at::scalar_tensor(value, at::TensorOptions().dtype(at::kLong)),
                  /*is_buffer=*/true);
  }
  archive.write("onebit_tensor_names", c10::IValue(join(tensor_names)));
  archive.write("onebit_counter_names", c10::IValue(join(counter_names)));
}

void TorchOptimizer::load(torch::serialize::InputArchive& archive) { (void)load(archive, OnResize::kError); }

std::string TorchOptimizer::load(torch::serialize::InputArchive& archive, OnResize on_resize) {
  const std::string kind = read_string(archive, "onebit_kind");
  ONEBIT_CHECK(kind == core_->name(), core_->name() << " load on rank " << comm_->rank()
                                                    << ": the archive holds a " << kind << " state");
  OptimizerState s;
  for (const auto& name : split(read_string(archive, "onebit_tensor_names"))) {
    at::Tensor t;
    archive.read("onebit_t_" + name, t, /*is_buffer=*/true);
    t = t.to(at::kFloat).contiguous();
    s.tensors[name].assign(t.data_ptr<float>(), t.data_ptr<float>() + t.numel());
  }
  for (const auto& name : split(read_string(archive, "onebit_counter_names"))) {
    at::Tensor t;
    archive.read("onebit_c_" + name, t, /*is_buffer=*/true);
    s.counters[name] = t.item<int64_t>();
  }
  return load_state(s, on_resize);
}

void TorchOptimizer::set_momentum_mask(size_t index, const at::Tensor& mask) {
  const std::string who = std::string(kind_->name) + " set_momentum_mask";
  ONEBIT_CHECK(kind_->momentum_mask,
               who << ": momentum masks are a 1-bit LAMB option (onebit-lamb, OnebitLamb; docs/algorithm.md §4)");
  ONEBIT_CHECK(index < flat_.tensors().size(),
               who << ": no parameter " << index << " (there are " << flat_.tensors().size() << ")");
  at::Tensor m;  // undefined: no mask
  if (mask.defined()) {
    ONEBIT_CHECK(mask.numel() == flat_.tensors()[index].numel(),
                 who << ": the mask for parameter " << index << " has " << mask.numel() << " elements, the parameter "
                     << flat_.tensors()[index].numel());
    m = mask.detach().to(at::kCPU, at::kFloat).contiguous().reshape({-1});
  }
  const std::span<const float> values = m.defined() ? std::span<const float>(m.data_ptr<float>(), m.numel())
                                                    : std::span<const float>();
#ifdef ONEBIT_HAVE_CUDA
  std::optional<torch_cuda::DeviceScope> scope;  // the core's device, for its copy of the mask
  if (device_) scope.emplace(device_->device());
#endif
  core_->set_momentum_mask(index, values);
}

}  // namespace onebit
