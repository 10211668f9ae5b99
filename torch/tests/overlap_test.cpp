// Overlap with backward: the exchange of LAMB's and the warmup's steps, started bucket by bucket from
// autograd hooks while backward runs, gives the bits of the same optimizer without overlap.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "onebit/error.hpp"
#include "onebit/local_comm.hpp"
#include "onebit/torch_optimizers.hpp"

namespace onebit {
namespace {

// A tanh MLP of 6 layers (32 wide): its parameters from a generator of their own (rank threads
// must not race on torch's global one), the same on every rank.
std::vector<at::Tensor> mlp_params() {
  auto gen = at::detail::createCPUGenerator(11);
  std::vector<at::Tensor> ps;
  for (int l = 0; l < 6; ++l) {
    ps.push_back((at::randn({32, 32}, gen) * 0.2).set_requires_grad(true));
    ps.push_back((at::randn({32}, gen) * 0.1).set_requires_grad(true));
  }
  return ps;
}

// Rank r's loss on its micro-batch m of step s.
at::Tensor loss_of(const std::vector<at::Tensor>& ps, int64_t s, int m, int r) {
  auto gen = at::detail::createCPUGenerator(static_cast<uint64_t>(100 * s + 10 * m + r + 1));
  at::Tensor x = at::randn({16, 32}, gen);
  for (size_t l = 0; l < ps.size(); l += 2) x = torch::tanh(torch::addmm(ps[l + 1], x, ps[l].t()));
  return x.pow(2).mean();
}

struct RankRun {
  at::Tensor weights;
  std::vector<OverlapReport> reports;  // one per step; empty where nothing was armed
  std::vector<at::Tensor> grads;       // per step, as backward left them
};

// Four steps of two micro-batches each; with overlap, the buckets (each about two layers) may start
// during the second micro-batch's backward (the first's arming is taken back).
RankRun train(Communicator& comm, const AnyOptions& options, bool overlap) {
  auto ps = mlp_params();
  std::shared_ptr<Communicator> borrowed(&comm, [](Communicator*) {});
  TorchOptimizer opt(ps, options, borrowed);
  if (overlap) opt.enable_overlap(2 * 33 * 32 * sizeof(float));
  RankRun run;
  for (int64_t s = 0; s < 4; ++s) {
    opt.zero_grad();
    if (opt.arm_overlap()) opt.disarm_overlap();
    loss_of(ps, s, 0, comm.rank()).backward();
    const bool armed = opt.arm_overlap();
    EXPECT_EQ(armed, overlap && opt.core().averages_gradient()) << "step " << s + 1;
    loss_of(ps, s, 1, comm.rank()).backward();
    run.grads.push_back(opt.flat().grads().clone());
    run.reports.push_back(opt.finish_overlap());
    opt.step();
  }
  at::Tensor w = opt.flat().params().clone();
  run.weights = w;
  return run;
}

bool bitwise_equal(const at::Tensor& a, const at::Tensor& b) {
  return a.sizes() == b.sizes() && std::memcmp(a.data_ptr(), b.data_ptr(), a.nbytes()) == 0;
}

TEST(TorchOverlap, BucketsStartDuringBackwardAndTheStepsKeepTheirBits) {
  const int world = 3;
  OnebitLambOptions onebit;
  onebit.freeze_step = 2;  // steps 1-2 overlap, 3-4 compress
  onebit.warmup_exchange = WirePrecision::kBf16;
  const std::vector<AnyOptions> cases = {LambOptions{.lr = 0.01f}, onebit};
  for (const AnyOptions& options : cases) {
    SCOPED_TRACE(optimizer_kind(options).name);
    std::vector<RankRun> plain(world), overlapped(world);
    run_local(world, [&](Communicator& comm) {
      plain[static_cast<size_t>(comm.rank())] = train(comm, options, false);
      overlapped[static_cast<size_t>(comm.rank())] = train(comm, options, true);
    });
    for (int r = 0; r < world; ++r) {
      EXPECT_TRUE(bitwise_equal(plain[static_cast<size_t>(r)].weights, overlapped[static_cast<size_t>(r)].weights))
          << "rank " << r;
      EXPECT_TRUE(bitwise_equal(overlapped[0].weights, overlapped[static_cast<size_t>(r)].weights)) << "rank " << r;
      for (size_t s = 0; s < 4; ++s) {
        const OverlapReport& rep = overlapped[static_cast<size_t>(r)].reports[s];
        if (std::holds_alternative<OnebitLambOptions>(options) && s >= 2) {
          EXPECT_EQ(rep.buckets, 0) << "a compression step does not overlap";
          continue;
        }
        EXPECT_EQ(rep.buckets, 3) << "step " << s + 1;  // two of the six layers a bucket
        // Backward returned with the average: the same bits on every rank.
        EXPECT_TRUE(bitwise_equal(overlapped[0].grads[s], overlapped[static_cast<size_t>(r)].grads[s]));
        // The last layers' gradients come first: their buckets start while backward goes on.
        EXPECT_GE(rep.started_in_backward, 1) << "step " << s + 1;
        EXPECT_GT(rep.exchange_seconds, 0.0);
      }
    }
  }
}

// A communicator only its first thread may call, as onebit's MPI.
class OneThreadComm final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string backend() const override { return "one-thread"; }
  bool any_thread() const override { return false; }

 protected:
  void do_allreduce_sum(std::span<float>) override {}
  void do_alltoall(std::span<const std::byte>, std::span<std::byte>) override {}
  void do_allgather(std::span<const std::byte>, std::span<std::byte>) override {}
  void do_broadcast(std::span<std::byte>, int) override {}
  void do_barrier() override {}
};

TEST(TorchOverlap, WhereItCannotWorkItSaysWhy) {
  auto ps = mlp_params();
  try {
    TorchLamb opt(ps, {}, std::make_shared<OneThreadComm>());
    opt.enable_overlap();
    ADD_FAILURE() << "overlap over a one-thread communicator";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("one thread only"), std::string::npos) << e.what();
  }
  std::vector<at::Tensor> frozen = {at::ones({4})};  // no autograd
  try {
    TorchLamb(frozen).enable_overlap();
    ADD_FAILURE() << "overlap without a parameter that takes a gradient";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("requires_grad"), std::string::npos) << e.what();
  }
  TorchLamb opt(ps);
  EXPECT_THROW(opt.enable_overlap(2), Error);  // a bucket smaller than one gradient
  opt.enable_overlap();
  ASSERT_TRUE(opt.arm_overlap());
  EXPECT_THROW(opt.arm_overlap(), Error);  // twice before a step
  loss_of(ps, 0, 0, 0).backward();
  opt.step();  // finishes the armed exchange itself
  EXPECT_EQ(opt.finish_overlap().buckets, 0);
}

}  // namespace
}  // namespace onebit
