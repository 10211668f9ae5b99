// The libtorch optimizers on CUDA parameters: flat buffers on the GPU with the parameters as views,
// the step on onebit's CUDA optimizers, bitwise equal to the same optimizer on CPU parameters over
// the NCCL Communicator and over a host communicator; mixed devices and misuse are clear errors.
#include <gtest/gtest.h>

#include <string>

#include "cuda_scenario.hpp"
#include "onebit/error.hpp"
#include "onebit/nccl_comm.hpp"

namespace onebit {
namespace {

using namespace cuda_scenario;

const at::Device kGpu(at::kCUDA, 0);

template <class F>
std::string error_of(F f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// The flat buffers live on the GPU, fp32 parameters and their gradients are views into them.
void expect_device_views(TorchOptimizer& opt) {
  EXPECT_EQ(opt.flat().device(), kGpu);
  EXPECT_TRUE(opt.flat().grads().device() == kGpu);
  const auto* base = static_cast<const char*>(opt.flat().params().data_ptr());
  for (size_t i = 0; i < opt.flat().tensors().size(); ++i) {
    const at::Tensor& p = opt.flat().tensors()[i];
    EXPECT_EQ(opt.flat().is_view(i), p.scalar_type() == at::kFloat) << "parameter " << i;
    if (opt.flat().is_view(i)) {
      EXPECT_EQ(p.data_ptr(), base + opt.flat().layout()[i].offset * sizeof(float)) << "parameter " << i;
    }
  }
}

TEST(TorchCuda, OnebitLambOverNcclEqualsTheCpuBitForBit) {
  ONEBIT_REQUIRE_TORCH_GPU();
  if (!nccl_available()) GTEST_SKIP() << "this build has no NCCL backend (ONEBIT_WITH_NCCL)";
  const Trajectory cpu = cpu_reference();
  std::shared_ptr<Communicator> nccl = make_nccl_communicator_single(0);
  ASSERT_TRUE(nccl->device_memory());
  const Trajectory gpu = run(kGpu, nccl, expect_device_views);
  expect_same(cpu, gpu);
  EXPECT_GT(nccl->stats().calls, 0u);
}

TEST(TorchCuda, OnebitLambOverAHostCommunicatorEqualsTheCpuBitForBit) {
  ONEBIT_REQUIRE_TORCH_GPU();
  // World size 1 without an engine: the device collectives are staged through host memory.
  expect_same(cpu_reference(), run(kGpu, nullptr, expect_device_views));
}

TEST(TorchCuda, MixedDevicesAndMisplacedBuffersAreErrors) {
  ONEBIT_REQUIRE_TORCH_GPU();
  std::vector<at::Tensor> mixed{at::zeros({3}, at::TensorOptions().device(kGpu)), at::zeros({2})};
  EXPECT_NE(error_of([&] { TorchLamb opt(mixed); }).find("must all be on the CPU or all on one GPU"),
            std::string::npos);
  std::vector<at::Tensor> ints{at::zeros({3}, at::TensorOptions().device(kGpu).dtype(at::kInt))};
  EXPECT_NE(error_of([&] { TorchLamb opt(ints); }).find("not a floating-point tensor"), std::string::npos);

  TorchLamb opt({at::zeros({4}, at::TensorOptions().device(kGpu))});
  EXPECT_NE(error_of([&] { opt.flat().param_span(); }).find("not in host memory"), std::string::npos);

  if (nccl_available()) {
    std::shared_ptr<Communicator> nccl = make_nccl_communicator_single(0);
    EXPECT_NE(error_of([&] { TorchLamb cpu_opt({at::zeros({4})}, {}, nccl); }).find("takes device memory"),
              std::string::npos);
  }
}

}  // namespace
}  // namespace onebit
