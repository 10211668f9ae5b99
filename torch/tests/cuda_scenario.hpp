// What the CUDA torch tests share: the skip where no GPU (or no CUDA libtorch) is present, and one
// TorchOnebitLamb run through warmup, a skipped step and compression, on CPU or CUDA parameters,
// recorded so two runs compare bit for bit.
#pragma once
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <limits>
#include <memory>
#include <vector>

#include "onebit/torch_optimizers.hpp"
#include "test_util.hpp"  // kernels/cuda: ONEBIT_REQUIRE_GPU

// Every CUDA torch test starts with this: where it cannot run it skips and says why.
#define ONEBIT_REQUIRE_TORCH_GPU()                                                  \
  do {                                                                              \
    ONEBIT_REQUIRE_GPU();                                                           \
    if (!at::hasCUDA()) GTEST_SKIP() << "this libtorch was built without CUDA";     \
  } while (0)

namespace onebit::cuda_scenario {

constexpr int kSteps = 8;
constexpr int kFreeze = 3;    // steps 1..3 warmup, then compression
constexpr int kBadStep = 5;   // an infinite gradient: every optimizer skips it
constexpr size_t kMasked = 2;  // the parameter with a momentum mask

// fp32 tensors of awkward sizes (one spans two 32K-element blocks) and an fp16 one, which keeps an
// fp32 master copy in the flat buffer.
inline std::vector<at::Tensor> make_params(at::Device device) {
  auto gen = at::detail::createCPUGenerator(17);
  std::vector<at::Tensor> ps;
  for (auto shape : std::vector<std::vector<int64_t>>{{5, 7}, {7}, {300, 131}, {1}, {130}})
    ps.push_back(at::randn(shape, gen).to(device).set_requires_grad(true));
  ps.push_back(at::randn({33}, gen).to(at::kHalf).to(device).set_requires_grad(true));
  return ps;
}

inline at::Tensor grad_for(const at::Tensor& p, int step, size_t i) {
  auto gen = at::detail::createCPUGenerator(static_cast<uint64_t>(1000 * step + i + 1));
  at::Tensor g = at::randn(p.sizes(), gen).mul_(0.05);
  if (step == kBadStep && i == 0) g.view({-1})[3] = std::numeric_limits<float>::infinity();
  return g.to(p.scalar_type()).to(p.device());
}

inline at::Tensor host_weights(const std::vector<at::Tensor>& ps) {
  std::vector<at::Tensor> flat;
  for (const auto& p : ps) flat.push_back(p.detach().to(at::kCPU, at::kFloat).reshape({-1}));
  return at::cat(flat);
}

struct Trajectory {
  std::vector<at::Tensor> weights;  // after every step, fp32 on the host
  std::vector<bool> applied;
  OptimizerState state;
};

inline OnebitLambOptions options() {
  OnebitLambOptions o;
  o.lr = 0.01f;
  o.weight_decay = 0.01f;
  o.freeze_step = kFreeze;
  return o;
}

// TorchOnebitLamb on parameters on `device` over `comm` (nullptr: world size 1 without an engine).
// check(opt), if given, runs once after construction.
template <class Check>
Trajectory run(at::Device device, std::shared_ptr<Communicator> comm, Check check) {
  std::vector<at::Tensor> ps = make_params(device);
  TorchOnebitLamb opt(ps, options(), std::move(comm));
  check(opt);
  const at::Tensor mask = (at::arange(ps[kMasked].numel()) % 2).to(at::kFloat).reshape(ps[kMasked].sizes());
  opt.set_momentum_mask(kMasked, mask);
  Trajectory t;
  for (int s = 0; s < kSteps; ++s) {
    for (size_t i = 0; i < ps.size(); ++i) {
      at::Tensor g = grad_for(ps[i], s, i);
      // Into the .grad view where there is one (as autograd accumulates), else a new tensor.
      if (ps[i].grad().defined())
        ps[i].mutable_grad().copy_(g);
      else
        ps[i].mutable_grad() = g;
    }
    opt.step();
    t.applied.push_back(opt.last_step_applied());
    t.weights.push_back(host_weights(ps));
  }
  t.state = opt.state();
  return t;
}

inline std::vector<float> values(const at::Tensor& host) {
  return {host.data_ptr<float>(), host.data_ptr<float>() + host.numel()};
}

inline void expect_same(const Trajectory& cpu, const Trajectory& gpu) {
  EXPECT_EQ(cpu.applied, gpu.applied);
  EXPECT_FALSE(gpu.applied.at(kBadStep));
  for (size_t s = 0; s < cpu.weights.size(); ++s)
    EXPECT_TRUE(cuda::test::same_bits(values(cpu.weights[s]), values(gpu.weights[s])))
        << "weights after step " << s + 1;
  EXPECT_EQ(cpu.state.counters, gpu.state.counters);
  for (const auto& [key, tensor] : cpu.state.tensors) {
    ASSERT_TRUE(gpu.state.tensors.count(key)) << key;
    EXPECT_TRUE(cuda::test::same_bits(tensor, gpu.state.tensors.at(key))) << key;
  }
  EXPECT_EQ(cpu.state.tensors.size(), gpu.state.tensors.size());
}

// The reference: the same run on CPU parameters, world size 1.
inline Trajectory cpu_reference() {
  return run(at::Device(at::kCPU), nullptr, [](TorchOptimizer&) {});
}

}  // namespace onebit::cuda_scenario
