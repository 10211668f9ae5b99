// TorchFlatParams: torch parameters moved into one flat fp32 buffer (views where the dtype and
// device allow, fp32 master copies elsewhere), and their gradients gathered into another.
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

}  // namespace

TorchFlatParams::TorchFlatParams(std::vector<at::Tensor> params)
    : params_(std::move(params)), layout_(sizes_of(params_)) {
  at::NoGradGuard no_grad;
  const auto n = static_cast<int64_t>(layout_.total());
  flat_ = at::empty({n}, at::TensorOptions().dtype(at::kFloat));
  grad_ = at::zeros({n}, at::TensorOptions().dtype(at::kFloat));
  view_.resize(params_.size());
  for (size_t i = 0; i < params_.size(); ++i) {
    at::Tensor& p = params_[i];
    at::Tensor region = flat_view(flat_, i);
    region.copy_(p.detach().reshape(p.sizes()));
    view_[i] = p.scalar_type() == at::kFloat && p.device().is_cpu() && !p.is_sparse();
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
  return g.defined() && g.scalar_type() == at::kFloat && g.device().is_cpu() && g.is_contiguous() &&
         g.data_ptr() == static_cast<void*>(grad_.data_ptr<float>() + layout_[i].offset);
}

void TorchFlatParams::gather_grads() {
  at::NoGradGuard no_grad;
  for (size_t i = 0; i < params_.size(); ++i) {
    at::Tensor& p = params_[i];
    // A parameter whose storage was replaced (model.to(), p.data = ...) is no longer what the
    // optimizer updates; say so instead of training a stale copy.
    ONEBIT_CHECK(!view_[i] || p.data_ptr() == static_cast<void*>(flat_.data_ptr<float>() + layout_[i].offset),
                 "onebit torch optimizer: parameter " << i << " was moved out of the flat buffer after "
                 "the optimizer was built (model.to(), .data = ...); build the optimizer last");
    if (view_[i] && grad_is_view(i)) continue;
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
