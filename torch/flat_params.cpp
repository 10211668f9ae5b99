// TorchFlatParams: torch parameters moved into one flat fp32 buffer (views where the dtype and
// device allow, fp32 master copies elsewhere), and their gradients gathered into another; on the
// CPU, or on the parameters' GPU in builds with CUDA.
#include <ATen/ATen.h>
#include <torch/csrc/autograd/variable.h>

#include <set>

#include "onebit/error.hpp"
#include "onebit/torch_optimizers.hpp"

namespace onebit {
namespace {

std::vector<size_t> sizes_of(const std::vector<at::Tensor>& params) {
  std::vector<size_t> sizes;
  std::set<const void*> seen;
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor& p = params[i];
    ONEBIT_CHECK(p.defined(), "onebit torch optimizer: parameter " << i << " is undefined");
    ONEBIT_CHECK(at::isFloatingType(p.scalar_type()),
                 "onebit torch optimizer: parameter " << i << " is " << p.scalar_type()
                                                      << ", not a floating-point tensor");
    ONEBIT_CHECK(seen.insert(p.unsafeGetTensorImpl()).second,
                 "onebit torch optimizer: parameter " << i << " is given twice");
    sizes.push_back(static_cast<size_t>(p.numel()));
  }
  return sizes;
}

// Where the flat buffers live. Builds without CUDA keep them on the CPU whatever the parameters'
// devices (GPU parameters get fp32 master copies there); builds with CUDA put them on the
// parameters' GPU, which all parameters must share.
c10::Device device_of(const std::vector<at::Tensor>& params) {
#ifdef ONEBIT_HAVE_CUDA
  if (params.empty() || params[0].device().is_cpu()) {
    for (size_t i = 0; i < params.size(); ++i)
      ONEBIT_CHECK(params[i].device().is_cpu(), "onebit torch optimizer: parameter " << i << " is on "
                       << params[i].device() << ", parameter 0 on the CPU: one optimizer's parameters "
                          "must all be on the CPU or all on one GPU");
    return c10::Device(c10::kCPU);
  }
  const c10::Device device = params[0].device();
  ONEBIT_CHECK(device.is_cuda(), "onebit torch optimizer: parameter 0 is on " << device
                                     << "; parameters must be on the CPU or on a CUDA device");
  for (size_t i = 1; i < params.size(); ++i)
    ONEBIT_CHECK(params[i].device() == device, "onebit torch optimizer: parameter " << i << " is on "
                     << params[i].device() << ", parameter 0 on " << device
                     << ": one optimizer's parameters must all be on the CPU or all on one GPU");
  return device;
#else
  (void)params;
  return c10::Device(c10::kCPU);
#endif
}

}  // namespace

TorchFlatParams::TorchFlatParams(std::vector<at::Tensor> params)
    : params_(std::move(params)), layout_(sizes_of(params_)) {
  at::NoGradGuard no_grad;
  const auto n = static_cast<int64_t>(layout_.total());
  const auto options = at::TensorOptions().dtype(at::kFloat).device(device_of(params_));
  flat_ = at::empty({n}, options);
  grad_ = at::zeros({n}, options);
  view_.resize(params_.size());
  for (size_t i = 0; i < params_.size(); ++i) {
    at::Tensor& p = params_[i];
    at::Tensor region = flat_view(flat_, i);
    region.copy_(p.detach().reshape(p.sizes()));
    view_[i] = p.scalar_type() == at::kFloat && p.device() == flat_.device() && !p.is_sparse();
    if (view_[i]) p.set_data(region);
    if (p.grad().defined()) flat_view(grad_, i).copy_(p.grad().reshape(p.sizes()));
    if (view_[i]) p.mutable_grad() = flat_view(grad_, i);
  }
}

at::Tensor TorchFlatParams::flat_view(const at::Tensor& flat, size_t i) const {
  const Layer& l = layout_[i];
  return flat.narrow(0, static_cast<int64_t>(l.offset), static_cast<int64_t>(l.size)).view(params_[i].sizes());
}

bool TorchFlatParams::all_views() const {
  for (bool v : view_)
    if (!v) return false;
  return true;
}

bool TorchFlatParams::grad_is_view(size_t i) const {
  const at::Tensor& g = params_[i].grad();
  return g.defined() && g.scalar_type() == at::kFloat && g.device() == grad_.device() &&
         g.is_contiguous() &&
         g.data_ptr() == static_cast<void*>(grad_.data_ptr<float>() + layout_[i].offset);
}

std::span<float> TorchFlatParams::host_span(const at::Tensor& flat, const char* what) const {
  ONEBIT_CHECK(flat.device().is_cpu(), "onebit torch optimizer " << what << ": the flat buffers are on "
                                           << flat.device() << ", not in host memory; use the tensor");
  return {flat.data_ptr<float>(), layout_.total()};
}

void TorchFlatParams::gather_grads() {
  for (size_t i = 0; i < params_.size(); ++i) gather_grad(i);
}

void TorchFlatParams::gather_grad(size_t i) {
  at::NoGradGuard no_grad;
  at::Tensor& p = params_[i];
  // A parameter whose storage was replaced (model.to(), p.data = ...) is no longer what the
  // optimizer updates; say so instead of training a stale copy.
  ONEBIT_CHECK(!view_[i] || p.data_ptr() == static_cast<void*>(flat_.data_ptr<float>() + layout_[i].offset),
               "onebit torch optimizer: parameter " << i << " was moved out of the flat buffer after "
               "the optimizer was built (model.to(), .data = ...); build the optimizer last");
  if (view_[i] && grad_is_view(i)) return;
  at::Tensor region = flat_view(grad_, i);
  const at::Tensor& g = p.grad();
  if (g.defined()) {
    ONEBIT_CHECK(!g.is_sparse(), "onebit torch optimizer: parameter " << i << " has a sparse gradient");
    ONEBIT_CHECK(g.sizes() == p.sizes(), "onebit torch optimizer: gradient " << i << " has shape "
                                                                             << g.sizes() << ", the parameter " << p.sizes());
    region.copy_(g);
  } else {
    region.zero_();
  }
  if (view_[i]) p.mutable_grad() = region;
}

void TorchFlatParams::write_back() {
  at::NoGradGuard no_grad;
  for (size_t i = 0; i < params_.size(); ++i)
    if (!view_[i]) params_[i].detach().copy_(flat_view(flat_, i));
}

void TorchFlatParams::zero_grad() {
  at::NoGradGuard no_grad;
  grad_.zero_();
  for (size_t i = 0; i < params_.size(); ++i)
    if (params_[i].grad().defined() && !(view_[i] && grad_is_view(i))) params_[i].mutable_grad().zero_();
}

}  // namespace onebit
