// The CUDA compressed allreduce and optimizers against the CPU ones, bit for bit: several ranks on
// one GPU over the local thread backend (staged through host memory), NCCL at world size 1,
// non-finite skips in both stages, asynchronous steps, and checkpoints moved between CPU and GPU.
#include <functional>
#include <limits>
#include <memory>

#include "onebit/compressed_allreduce.hpp"
#include "onebit/cuda_optimizers.hpp"
#include "onebit/local_comm.hpp"
#include "onebit/nccl_comm.hpp"
#include "onebit/optimizers.hpp"
#include "test_util.hpp"

namespace onebit::cuda {
namespace {

using namespace test;
using Vec = std::vector<float>;

uint64_t seed(int rank, int call, uint64_t salt) { return salt * 1000003 + rank * 1009 + call; }

// Rank p's input for call c; rank P-1 sends a NaN at call `nan_call`.
Vec input(size_t n, int rank, int call, int world, int nan_call, uint64_t salt) {
  Vec x = randn(n, seed(rank, call, salt));
  if (call == nan_call && rank == world - 1 && n > 0) x[n / 2] = std::numeric_limits<float>::quiet_NaN();
  return x;
}

struct RankRecord {
  std::vector<Vec> outputs;
  std::vector<bool> applied;
  Vec worker_error, server_error;
};

TEST(CudaCompressedAllreduce, MatchesCpuOnEveryRank) {
  ONEBIT_REQUIRE_GPU();
  constexpr int kCalls = 5, kNanCall = 2;
  for (int world : {1, 2, 3, 4}) {
    for (size_t n : {size_t{1}, size_t{1000}, size_t{100003}})
    for (size_t group : {size_t{0}, size_t{256}}) {
      SCOPED_TRACE(testing::Message() << "world " << world << ", " << n << " elements, scale groups of " << group);
      const auto bounds = random_bounds(n, n + world);
      std::vector<RankRecord> cpu(world), gpu(world);
      run_local(world, [&](Communicator& comm) {
        ThreadPool pool(1);
        CompressedAllreduce ar(comm, pool, n, bounds, group);
        auto& rec = cpu[comm.rank()];
        for (int c = 0; c < kCalls; ++c) {
          Vec x = input(n, comm.rank(), c, world, kNanCall, 7);
          rec.applied.push_back(ar.run(x));
          rec.outputs.push_back(x);
        }
        rec.worker_error = ar.worker_error();
        rec.server_error = ar.server_error();
      });
      run_local(world, [&](Communicator& comm) {
        ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
        StreamGuard stream;
        CudaCompressedAllreduce ar(comm, stream.get(), n, bounds, nullptr, group);
        auto& rec = gpu[comm.rank()];
        for (int c = 0; c < kCalls; ++c) {
          DeviceArray<float> x(std::span<const float>(input(n, comm.rank(), c, world, kNanCall, 7)));
          rec.applied.push_back(ar.run(x.data()));
          rec.outputs.push_back(x.download());
        }
        rec.worker_error = ar.worker_error();
        rec.server_error = ar.server_error();
      });
      for (int r = 0; r < world; ++r) {
        SCOPED_TRACE(testing::Message() << "rank " << r);
        EXPECT_EQ(cpu[r].applied, gpu[r].applied);
        EXPECT_FALSE(gpu[r].applied[kNanCall]);
        for (int c = 0; c < kCalls; ++c) EXPECT_TRUE(same_bits(cpu[r].outputs[c], gpu[r].outputs[c])) << "call " << c;
        EXPECT_TRUE(same_bits(cpu[r].worker_error, gpu[r].worker_error));
        EXPECT_TRUE(same_bits(cpu[r].server_error, gpu[r].server_error));
      }
    }
  }
}

// --- optimizers ---------------------------------------------------------------------------------

struct Scenario {
  FlatLayout layout;
  int steps, nan_steps[2];
};

Scenario make_setup() {
  // Two Partition blocks and more, tiny and empty layers, a size that is not a multiple of 64.
  return {FlatLayout(sizes_of(random_bounds(70001, 3))), 10, {1, 5}};
}

Vec grad(const Scenario& s, int rank, int step, int world) {
  Vec g = randn(s.layout.total(), seed(rank, step, 11), 0.01f);
  for (int bad : s.nan_steps)
    if (step == bad && rank == world - 1) g[g.size() / 3] = std::numeric_limits<float>::infinity();
  return g;
}

struct Trajectory {
  std::vector<Vec> params;
  std::vector<bool> applied;
  OptimizerState state;
};

using CpuFactory = std::function<std::unique_ptr<Optimizer>(const FlatLayout&, Communicator&)>;
using GpuFactory = std::function<std::unique_ptr<CudaOptimizer>(const FlatLayout&, Communicator&, Stream)>;

std::vector<Trajectory> run_cpu(const Scenario& s, int world, const CpuFactory& make) {
  std::vector<Trajectory> out(world);
  run_local(world, [&](Communicator& comm) {
    auto opt = make(s.layout, comm);
    Vec w = randn(s.layout.total(), 5, 0.1f);
    auto& t = out[comm.rank()];
    for (int k = 0; k < s.steps; ++k) {
      Vec g = grad(s, comm.rank(), k, world);
      t.applied.push_back(opt->step(w, g));
      t.params.push_back(w);
    }
    t.state = opt->state();
  });
  return out;
}

std::vector<Trajectory> run_gpu(const Scenario& s, int world, const GpuFactory& make, Communicator* nccl = nullptr) {
  std::vector<Trajectory> out(world);
  auto body = [&](Communicator& comm, cudaStream_t stream) {
    auto opt = make(s.layout, comm, stream);
    DeviceArray<float> w(std::span<const float>(randn(s.layout.total(), 5, 0.1f)));
    DeviceArray<float> g(s.layout.total());
    auto& t = out[comm.rank()];
    for (int k = 0; k < s.steps; ++k) {
      g.upload(grad(s, comm.rank(), k, world));
      t.applied.push_back(opt->step(std::span<float>(w.data(), w.size()), std::span<float>(g.data(), g.size())));
      t.params.push_back(w.download());
    }
    t.state = opt->state();
  };
  if (nccl) {
    body(*nccl, static_cast<StreamCommunicator*>(nccl)->stream());
  } else {
    run_local(world, [&](Communicator& comm) {
      ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
      StreamGuard stream;
      body(comm, stream.get());
    });
  }
  return out;
}

void expect_same(const std::vector<Trajectory>& cpu, const std::vector<Trajectory>& gpu) {
  ASSERT_EQ(cpu.size(), gpu.size());
  for (size_t r = 0; r < cpu.size(); ++r) {
    SCOPED_TRACE(testing::Message() << "rank " << r);
    EXPECT_EQ(cpu[r].applied, gpu[r].applied);
    for (size_t k = 0; k < cpu[r].params.size(); ++k)
      EXPECT_TRUE(same_bits(cpu[r].params[k], gpu[r].params[k])) << "after step " << k + 1;
    EXPECT_EQ(cpu[r].state.counters, gpu[r].state.counters);
    for (const auto& [key, value] : cpu[r].state.tensors) {
      ASSERT_TRUE(gpu[r].state.tensors.count(key)) << key;
      EXPECT_TRUE(same_bits(value, gpu[r].state.tensors.at(key))) << key;
    }
  }
}

OnebitLambOptions lamb1_options() {
  OnebitLambOptions o;
  o.lr = 2e-3f;
  o.weight_decay = 0.01f;
  o.freeze_step = 3;
  return o;
}

// What `onebit train` runs by default, shrunk to the scenario: the automatic freeze (here after
// step 3 at the latest), refresh steps, tracked scales, scale groups and a bf16 warmup exchange.
OnebitLambOptions lamb1_default_options() {
  OnebitLambOptions o = lamb1_options();
  o.freeze_step = kAutoFreeze;
  o.auto_freeze = {.min_steps = 2, .max_steps = 3, .window = 1, .tolerance = 0.5};
  o.refresh_interval = 1;
  o.track_scales = 1;
  o.scale_group = 64;
  o.warmup_exchange = WirePrecision::kBf16;
  return o;
}

OnebitAdamOptions adam1_grouped_options() {
  OnebitAdamOptions o;
  o.lr = 1e-3f;
  o.freeze_step = kAutoFreeze;
  o.auto_freeze = {.min_steps = 2, .max_steps = 3, .window = 1, .tolerance = 0.5};
  o.scale_group = 128;
  o.warmup_exchange = WirePrecision::kFp16;
  return o;
}

OnebitAdamOptions adam1_options() {
  OnebitAdamOptions o;
  o.lr = 1e-3f;
  o.weight_decay = 0.01f;
  o.freeze_step = 3;
  return o;
}

// A mask on the second layer: every other element zero (docs/algorithm.md §4's momentum mask).
Vec mask_for(const FlatLayout& layout) {
  Vec m(layout[1].size);
  for (size_t i = 0; i < m.size(); ++i) m[i] = i % 2 ? 0.0f : 1.0f;
  return m;
}

struct Case {
  const char* name;
  CpuFactory cpu;
  GpuFactory gpu;
};

std::vector<Case> cases() {
  return {
      {"lamb", [](const FlatLayout& l, Communicator& c) { return std::make_unique<Lamb>(l, c, LambOptions{}); },
       [](const FlatLayout& l, Communicator& c, Stream s) { return std::make_unique<CudaLamb>(l, c, s); }},
      {"onebit-lamb",
       [](const FlatLayout& l, Communicator& c) {
         auto o = std::make_unique<OnebitLamb>(l, c, lamb1_options());
         o->set_momentum_mask(1, mask_for(l));
         return o;
       },
       [](const FlatLayout& l, Communicator& c, Stream s) {
         auto o = std::make_unique<CudaOnebitLamb>(l, c, s, lamb1_options());
         o->set_momentum_mask(1, mask_for(l));
         return o;
       }},
      {"onebit-adam",
       [](const FlatLayout& l, Communicator& c) { return std::make_unique<OnebitAdam>(l, c, adam1_options()); },
       [](const FlatLayout& l, Communicator& c, Stream s) {
         return std::make_unique<CudaOnebitAdam>(l, c, s, adam1_options());
       }},
      {"onebit-lamb, train's defaults",
       [](const FlatLayout& l, Communicator& c) {
         auto o = std::make_unique<OnebitLamb>(l, c, lamb1_default_options());
         o->set_momentum_mask(1, mask_for(l));
         return o;
       },
       [](const FlatLayout& l, Communicator& c, Stream s) {
         auto o = std::make_unique<CudaOnebitLamb>(l, c, s, lamb1_default_options());
         o->set_momentum_mask(1, mask_for(l));
         return o;
       }},
      {"onebit-adam, auto freeze, scale groups, fp16 warmup",
       [](const FlatLayout& l, Communicator& c) { return std::make_unique<OnebitAdam>(l, c, adam1_grouped_options()); },
       [](const FlatLayout& l, Communicator& c, Stream s) {
         return std::make_unique<CudaOnebitAdam>(l, c, s, adam1_grouped_options());
       }},
      {"lamb, bf16 exchange",
       [](const FlatLayout& l, Communicator& c) {
         return std::make_unique<Lamb>(l, c, LambOptions{.warmup_exchange = WirePrecision::kBf16});
       },
       [](const FlatLayout& l, Communicator& c, Stream s) {
         return std::make_unique<CudaLamb>(l, c, s, LambOptions{.warmup_exchange = WirePrecision::kBf16});
       }},
  };
}

TEST(CudaOptimizers, MatchCpuBitForBitOverLocalRanks) {
  ONEBIT_REQUIRE_GPU();
  const Scenario s = make_setup();
  for (const auto& c : cases()) {
    for (int world : {1, 3}) {
      SCOPED_TRACE(testing::Message() << c.name << ", world " << world);
      const auto cpu = run_cpu(s, world, c.cpu);
      const auto gpu = run_gpu(s, world, c.gpu);
      expect_same(cpu, gpu);
      EXPECT_FALSE(gpu[0].applied[s.nan_steps[0]]);
      EXPECT_FALSE(gpu[0].applied[s.nan_steps[1]]);
    }
  }
}

TEST(CudaOptimizers, AsyncStepsEqualWaitedSteps) {
  ONEBIT_REQUIRE_GPU();
  const Scenario s = make_setup();
  const auto waited = run_gpu(s, 1, cases()[1].gpu);
  run_local(1, [&](Communicator& comm) {
    ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
    StreamGuard stream;
    auto opt = cases()[1].gpu(s.layout, comm, stream.get());
    DeviceArray<float> w(std::span<const float>(randn(s.layout.total(), 5, 0.1f)));
    std::vector<DeviceArray<float>> g;
    for (int k = 0; k < s.steps; ++k) g.emplace_back(std::span<const float>(grad(s, 0, k, 1)));
    for (int k = 0; k < s.steps; ++k) opt->step_async(w.data(), g[k].data());
    opt->sync();
    EXPECT_EQ(opt->steps(), s.steps - 2);
    EXPECT_EQ(opt->skipped(), 2);
    EXPECT_TRUE(same_bits(waited[0].params.back(), w.download()));
  });
}

// state() is const: for a step still in flight it waits and reports the state after that step
// (counters, moments, the error feedback where the step will commit it) without folding it in.
// Every step of the scenario: warmup, compression, and the skipped non-finite ones.
TEST(CudaOptimizers, StateOfAStepInFlightIsTheStateAfterIt) {
  ONEBIT_REQUIRE_GPU();
  const Scenario s = make_setup();
  for (const auto& c : cases()) {
    for (int world : {1, 2}) {
      SCOPED_TRACE(testing::Message() << c.name << ", world " << world);
      run_local(world, [&](Communicator& comm) {
        ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
        StreamGuard stream;
        auto opt = c.gpu(s.layout, comm, stream.get());
        DeviceArray<float> w(std::span<const float>(randn(s.layout.total(), 5, 0.1f)));
        DeviceArray<float> g(s.layout.total());
        for (int k = 0; k < s.steps; ++k) {
          SCOPED_TRACE(testing::Message() << "step " << k << ", rank " << comm.rank());
          g.upload(grad(s, comm.rank(), k, world));
          opt->step_async(w.data(), g.data());
          const OptimizerState in_flight = opt->state();
          opt->sync();
          const OptimizerState after = opt->state();
          EXPECT_EQ(in_flight.counters, after.counters);
          EXPECT_EQ(after.counters.at("step") + after.counters.at("skipped"), k + 1);
          ASSERT_EQ(in_flight.tensors.size(), after.tensors.size());
          for (const auto& [key, value] : after.tensors) {
            ASSERT_TRUE(in_flight.tensors.count(key)) << key;
            EXPECT_TRUE(same_bits(in_flight.tensors.at(key), value)) << key;
          }
        }
      });
    }
  }
}

TEST(CudaOptimizers, CheckpointsMoveBetweenCpuAndGpu) {
  ONEBIT_REQUIRE_GPU();
  const Scenario s = make_setup();
  const int world = 2, split = 4;  // save after step 4 (compression stage), resume on the other side
  for (const auto& c : cases()) {
    SCOPED_TRACE(c.name);
    std::vector<Vec> straight(world), cpu_then_gpu(world), gpu_then_cpu(world);
    run_local(world, [&](Communicator& comm) {
      ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
      StreamGuard stream;
      const int r = comm.rank();
      auto gpu_step = [&](CudaOptimizer& o, DeviceArray<float>& dw, int k) {
        DeviceArray<float> dg(std::span<const float>(grad(s, r, k, world)));
        o.step(std::span<float>(dw.data(), dw.size()), std::span<float>(dg.data(), dg.size()));
      };
      auto cpu_step = [&](Optimizer& o, Vec& w, int k) {
        Vec g = grad(s, r, k, world);
        o.step(w, g);
      };
      const Vec w0 = randn(s.layout.total(), 5, 0.1f);

      auto cpu = c.cpu(s.layout, comm);
      Vec w = w0;
      for (int k = 0; k < s.steps; ++k) cpu_step(*cpu, w, k);
      straight[r] = w;

      auto cpu_a = c.cpu(s.layout, comm);
      auto gpu_a = c.gpu(s.layout, comm, stream.get());
      Vec wa = w0;
      for (int k = 0; k < split; ++k) cpu_step(*cpu_a, wa, k);
      gpu_a->load_state(cpu_a->state());
      DeviceArray<float> dwa{std::span<const float>(wa)};
      for (int k = split; k < s.steps; ++k) gpu_step(*gpu_a, dwa, k);
      cpu_then_gpu[r] = dwa.download();

      auto gpu_b = c.gpu(s.layout, comm, stream.get());
      auto cpu_b = c.cpu(s.layout, comm);
      DeviceArray<float> dwb{std::span<const float>(w0)};
      for (int k = 0; k < split; ++k) gpu_step(*gpu_b, dwb, k);
      cpu_b->load_state(gpu_b->state());
      EXPECT_EQ(cpu_b->steps(), gpu_b->steps());
      Vec wb = dwb.download();
      for (int k = split; k < s.steps; ++k) cpu_step(*cpu_b, wb, k);
      gpu_then_cpu[r] = wb;
    });
    for (int r = 0; r < world; ++r) {
      EXPECT_TRUE(same_bits(straight[r], cpu_then_gpu[r])) << "CPU then GPU, rank " << r;
      EXPECT_TRUE(same_bits(straight[r], gpu_then_cpu[r])) << "GPU then CPU, rank " << r;
    }
  }
}

#ifdef ONEBIT_HAVE_NCCL
TEST(CudaNccl, WorldOfOneMatchesCpu) {
  ONEBIT_REQUIRE_GPU();
  const Scenario s = make_setup();
  for (bool ordered : {false, true}) {
    SCOPED_TRACE(ordered ? "stream-ordered" : "blocking");
    ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
    auto nccl = make_nccl_communicator_single(0);
    nccl->set_stream_ordered(ordered);
    EXPECT_EQ(nccl->backend(), "nccl");
    EXPECT_TRUE(nccl->device_memory());
    for (const auto& c : cases()) {
      SCOPED_TRACE(c.name);
      expect_same(run_cpu(s, 1, c.cpu), run_gpu(s, 1, c.gpu, nccl.get()));
    }
    // The plain collectives on device memory.
    DeviceArray<float> x(std::span<const float>(Vec{1.0f, 2.0f, 3.0f}));
    nccl->allreduce_sum(std::span<float>(x.data(), 3));
    nccl->allgather(std::span<const std::byte>(reinterpret_cast<const std::byte*>(x.data()), 4),
                    std::span<std::byte>(reinterpret_cast<std::byte*>(x.data()) + 4, 4));
    nccl->barrier();
    EXPECT_EQ(x.download(), (Vec{1.0f, 1.0f, 3.0f}));
    EXPECT_GT(nccl->stats().calls, 0u);
  }
}
#endif

}  // namespace
}  // namespace onebit::cuda
