// The libtorch optimizers on CUDA parameters over a c10d ProcessGroupNCCL (world size 1, a FileStore
// rendezvous): the c10d device communicator passes device buffers to NCCL without host staging, and
// the run is bitwise equal to the same optimizer on CPU parameters. Needs a libtorch built with CUDA.
#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <string>

#include "c10d_compat.hpp"
#include "cuda_scenario.hpp"
#include "onebit/torch_c10d.hpp"

namespace onebit {
namespace {

using namespace cuda_scenario;

const at::Device kGpu(at::kCUDA, 0);

c10d_compat::ProcessGroupPtr nccl_group_of_one() {
  static int groups = 0;  // a fresh rendezvous file for every group
  const auto path = std::filesystem::temp_directory_path() /
                    ("onebit_nccl_group_test." + std::to_string(::getpid()) + "." + std::to_string(groups++));
  std::filesystem::remove(path);
  auto store = c10::make_intrusive<::c10d::FileStore>(path.string(), 1);
  auto options = ::c10d::ProcessGroupNCCL::Options::create();
  options->timeout = std::chrono::milliseconds(60000);
  return c10d_compat::group_of(store, 0, 1, c10::make_intrusive<::c10d::ProcessGroupNCCL>(store, 0, 1, options),
                               c10d_compat::Engine::kNccl);
}

TEST(TorchCudaC10d, OnebitLambOverProcessGroupNcclEqualsTheCpuBitForBit) {
  ONEBIT_REQUIRE_TORCH_GPU();
  const Trajectory cpu = cpu_reference();
  std::shared_ptr<Communicator> comm = make_c10d_device_communicator(nccl_group_of_one(), kGpu);
  EXPECT_EQ(comm->backend(), "c10d-nccl");
  EXPECT_TRUE(comm->device_memory());
  const Trajectory gpu = run(kGpu, comm, [](TorchOptimizer& opt) {
    EXPECT_TRUE(opt.flat().device().is_cuda());
  });
  expect_same(cpu, gpu);
  EXPECT_GT(comm->stats().calls, 0u);
}

// The collectives one by one (the warmup allreduce has nothing to do at world size 1 inside the
// optimizers), blocking and stream-ordered, on buffers torch allocated on its own stream.
TEST(TorchCudaC10d, CollectivesTakeDeviceBuffers) {
  ONEBIT_REQUIRE_TORCH_GPU();
  std::unique_ptr<StreamCommunicator> comm = make_c10d_device_communicator(nccl_group_of_one(), kGpu);
  for (bool ordered : {false, true}) {
    SCOPED_TRACE(ordered ? "stream-ordered" : "blocking");
    comm->set_stream_ordered(ordered);
    at::Tensor x = at::tensor({1.0f, 2.0f, 3.0f}).to(kGpu);
    at::Tensor y = at::zeros({3}, at::TensorOptions().device(kGpu));
    comm->allreduce_sum({x.data_ptr<float>(), 3});
    comm->broadcast({static_cast<std::byte*>(x.data_ptr()), x.nbytes()}, 0);
    comm->allgather({static_cast<const std::byte*>(x.data_ptr()) + 4, 4}, {static_cast<std::byte*>(y.data_ptr()), 4});
    comm->alltoall({static_cast<const std::byte*>(x.data_ptr()), 4},
                   {static_cast<std::byte*>(y.data_ptr()) + 8, 4});
    comm->synchronize();
    comm->barrier();
    EXPECT_TRUE(at::equal(x.cpu(), at::tensor({1.0f, 2.0f, 3.0f})));
    EXPECT_TRUE(at::equal(y.cpu(), at::tensor({2.0f, 0.0f, 1.0f})));
  }
  EXPECT_EQ(comm->stats().calls, 10u);
}

}  // namespace
}  // namespace onebit
