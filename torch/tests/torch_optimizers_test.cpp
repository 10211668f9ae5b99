// The libtorch optimizers: parameters and gradients as views of the flat buffers, steps equal to the
// core's, fp16/bf16 parameters through fp32 master weights, and save/load that resumes bit for bit.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <sstream>

#include "onebit/error.hpp"
#include "onebit/local_comm.hpp"
#include "onebit/torch_c10d.hpp"
#include "onebit/torch_optimizers.hpp"

namespace onebit {
namespace {

// A generator of its own: rank threads must not race on torch's global one.
std::vector<at::Tensor> make_params(uint64_t seed, at::ScalarType type = at::kFloat) {
  auto gen = at::detail::createCPUGenerator(seed);
  std::vector<at::Tensor> ps;
  for (auto shape : std::vector<std::vector<int64_t>>{{5, 7}, {7}, {3, 5}, {1}, {130}})
    ps.push_back(at::randn(shape, gen).to(type).set_requires_grad(true));
  return ps;
}

// Step s's gradient for parameter i on rank r: fixed, different everywhere.
at::Tensor grad_for(const at::Tensor& p, int64_t s, size_t i, int r = 0) {
  auto gen = at::detail::createCPUGenerator(static_cast<uint64_t>(1000 * s + 10 * i + 7 * r + 1));
  return at::randn(p.sizes(), gen).to(p.scalar_type());
}

void set_grads(std::vector<at::Tensor>& ps, int64_t s, int r = 0) {
  for (size_t i = 0; i < ps.size(); ++i) ps[i].mutable_grad() = grad_for(ps[i], s, i, r);
}

at::Tensor cat_params(const std::vector<at::Tensor>& ps) {
  std::vector<at::Tensor> flat;
  for (const auto& p : ps) flat.push_back(p.detach().to(at::kFloat).reshape({-1}));
  return torch::cat(flat);
}

bool bitwise_equal(const at::Tensor& a, const at::Tensor& b) {
  return a.sizes() == b.sizes() &&
         std::memcmp(a.contiguous().data_ptr(), b.contiguous().data_ptr(), a.nbytes()) == 0;
}

OnebitLambOptions lamb1(int64_t freeze) {
  OnebitLambOptions o;
  o.lr = 0.01f;
  o.weight_decay = 0.01f;
  o.freeze_step = freeze;
  return o;
}

TEST(TorchOptimizers, ParametersAndGradientsAreViewsOfTheFlatBuffers) {
  auto ps = make_params(1);
  const at::Tensor before = cat_params(ps);
  TorchLamb opt(ps);
  const float* flat = opt.flat().params().data_ptr<float>();
  const float* grads = opt.flat().grads().data_ptr<float>();
  for (size_t i = 0; i < ps.size(); ++i) {
    const size_t off = opt.flat().layout()[i].offset;
    EXPECT_TRUE(opt.flat().is_view(i));
    EXPECT_EQ(ps[i].data_ptr<float>(), flat + off);
    EXPECT_EQ(ps[i].grad().data_ptr<float>(), grads + off);
  }
  EXPECT_TRUE(bitwise_equal(before, opt.flat().params()));
  // Autograd accumulates into the .grad views: the flat gradient fills with no copy.
  auto loss = (ps[0].sum() * 2 + ps[4].pow(2).sum());
  loss.backward();
  EXPECT_EQ(ps[0].grad().data_ptr<float>(), grads);
  EXPECT_TRUE(torch::allclose(opt.flat().grads().narrow(0, 0, 35), torch::full({35}, 2.0f)));
  opt.zero_grad();
  EXPECT_EQ(ps[0].grad().data_ptr<float>(), grads);
  EXPECT_EQ(opt.flat().grads().abs().sum().item<float>(), 0.0f);
  // A replaced .grad is copied in and the view restored.
  ps[1].mutable_grad() = torch::ones({7});
  opt.step();
  EXPECT_EQ(ps[1].grad().data_ptr<float>(), grads + opt.flat().layout()[1].offset);
}

TEST(TorchOptimizers, StepsEqualTheCoreOptimizer) {
  auto ps = make_params(2);
  const at::Tensor w0 = cat_params(ps);
  TorchOnebitLamb opt(ps, lamb1(3));
  auto comm = make_single_rank_communicator();
  OnebitLamb core(opt.flat().layout(), *comm, lamb1(3));
  std::vector<float> w(w0.data_ptr<float>(), w0.data_ptr<float>() + w0.numel());
  for (int64_t s = 0; s < 6; ++s) {
    set_grads(ps, s);
    const at::Tensor g = cat_params([&] {
      std::vector<at::Tensor> gs;
      for (auto& p : ps) gs.push_back(p.grad());
      return gs;
    }());
    std::vector<float> gv(g.data_ptr<float>(), g.data_ptr<float>() + g.numel());
    opt.step();
    core.step(w, gv);
    EXPECT_TRUE(bitwise_equal(cat_params(ps), torch::from_blob(w.data(), {w0.numel()}))) << "step " << s;
  }
  EXPECT_FALSE(opt.core().in_warmup());
}

TEST(TorchOptimizers, HalfPrecisionParametersKeepFp32MasterWeights) {
  for (auto type : {at::kHalf, at::kBFloat16}) {
    auto ps = make_params(3, type);
    const at::Tensor w0 = cat_params(ps);
    TorchOnebitAdam opt(ps, OnebitAdamOptions{.lr = 0.01f, .freeze_step = 2});
    auto comm = make_single_rank_communicator();
    OnebitAdam core(opt.flat().layout(), *comm, OnebitAdamOptions{.lr = 0.01f, .freeze_step = 2});
    std::vector<float> w(w0.data_ptr<float>(), w0.data_ptr<float>() + w0.numel());
    for (int64_t s = 0; s < 4; ++s) {
      set_grads(ps, s);
      std::vector<at::Tensor> gs;
      for (auto& p : ps) gs.push_back(p.grad());
      const at::Tensor g = cat_params(gs);  // the half gradients, widened exactly
      std::vector<float> gv(g.data_ptr<float>(), g.data_ptr<float>() + g.numel());
      opt.step();
      core.step(w, gv);
    }
    EXPECT_FALSE(opt.flat().is_view(0));
    EXPECT_EQ(ps[0].scalar_type(), type);
    const at::Tensor expect = torch::from_blob(w.data(), {w0.numel()});
    EXPECT_TRUE(bitwise_equal(opt.flat().params(), expect));
    EXPECT_TRUE(bitwise_equal(cat_params(ps), expect.to(type).to(at::kFloat)));
    EXPECT_TRUE(opt.state().tensors.count("master_params"));
  }
}

// Runs `steps` steps from step `from`, returning the parameters after each.
std::vector<at::Tensor> run_steps(TorchOptimizer& opt, std::vector<at::Tensor>& ps, int64_t from, int64_t steps) {
  std::vector<at::Tensor> out;
  for (int64_t s = from; s < from + steps; ++s) {
    set_grads(ps, s);
    opt.step();
    out.push_back(cat_params(ps).clone());
  }
  return out;
}

TEST(TorchOptimizers, SaveAndLoadResumeBitForBitInTheCompressionStage) {
  auto ps = make_params(4);
  TorchOnebitLamb opt(ps, lamb1(2));
  run_steps(opt, ps, 0, 4);  // two warmup, two compressed steps
  std::stringstream checkpoint;
  {
    torch::serialize::OutputArchive archive;
    opt.save(archive);
    archive.save_to(checkpoint);
  }
  const at::Tensor saved_params = cat_params(ps).clone();
  const auto expected = run_steps(opt, ps, 4, 3);

  auto fresh = make_params(99);  // different values: everything must come from the checkpoint
  {
    torch::NoGradGuard no_grad;
    int64_t off = 0;
    for (auto& p : fresh) {
      p.copy_(saved_params.narrow(0, off, p.numel()).view(p.sizes()));
      off += p.numel();
    }
  }
  TorchOnebitLamb resumed(fresh, lamb1(2));
  torch::serialize::InputArchive archive;
  archive.load_from(checkpoint);
  resumed.load(archive);
  EXPECT_EQ(resumed.core().steps(), 4);
  const auto got = run_steps(resumed, fresh, 4, 3);
  for (size_t s = 0; s < got.size(); ++s) EXPECT_TRUE(bitwise_equal(got[s], expected[s])) << "step " << s;
}

TEST(TorchOptimizers, LoadRejectsAnotherOptimizersState) {
  auto a = make_params(5);
  TorchLamb lamb(a);
  torch::serialize::OutputArchive out;
  lamb.save(out);
  std::stringstream buf;
  out.save_to(buf);
  auto b = make_params(5);
  TorchOnebitLamb other(b, lamb1(2));
  torch::serialize::InputArchive in;
  in.load_from(buf);
  EXPECT_THROW(other.load(in), onebit::Error);
}

TEST(TorchOptimizers, RanksStayIdenticalOverTheLocalBackend) {
  const int world = 3;
  std::vector<at::Tensor> finals(world);
  run_local(world, [&](Communicator& comm) {
    auto ps = make_params(6);
    // The optimizer borrows the thread's communicator.
    std::shared_ptr<Communicator> borrowed(&comm, [](Communicator*) {});
    TorchOnebitLamb opt(ps, lamb1(2), borrowed);
    for (int64_t s = 0; s < 5; ++s) {
      set_grads(ps, s, comm.rank());
      opt.step();
    }
    finals[static_cast<size_t>(comm.rank())] = cat_params(ps).clone();
  });
  for (int r = 1; r < world; ++r) EXPECT_TRUE(bitwise_equal(finals[0], finals[static_cast<size_t>(r)]));
}

TEST(TorchOptimizers, MomentumMaskNeedsTheParametersShape) {
  auto ps = make_params(7);
  OnebitLambOptions o = lamb1(1);
  o.weight_decay = 0;  // then a zero momentum leaves the weight exactly where it is
  TorchOnebitLamb opt(ps, o);
  EXPECT_THROW(opt.set_momentum_mask(0, torch::ones({3})), onebit::Error);
  EXPECT_THROW(opt.set_momentum_mask(9, torch::ones({1})), onebit::Error);
  opt.set_momentum_mask(4, torch::cat({torch::ones({30}), torch::zeros({100})}));
  set_grads(ps, 0);
  opt.step();
  set_grads(ps, 1);
  const at::Tensor before = ps[4].detach().clone();
  opt.step();  // compressed: the masked elements get zero momentum and stay put
  EXPECT_TRUE(torch::equal(ps[4].detach().narrow(0, 30, 100), before.narrow(0, 30, 100)));
}

TEST(TorchOptimizers, ModuleParametersTrainAsViews) {
  torch::manual_seed(8);
  torch::nn::Sequential net(torch::nn::Linear(4, 16), torch::nn::Tanh(), torch::nn::Linear(16, 1));
  TorchLamb opt(net->parameters(), LambOptions{.lr = 0.01f});
  const auto x = torch::randn({64, 4});
  const auto y = x.sum(1, true).sin();
  float first = 0, last = 0;
  for (int s = 0; s < 60; ++s) {
    opt.zero_grad();
    auto loss = torch::mse_loss(net->forward(x), y);
    loss.backward();
    opt.step();
    (s == 0 ? first : last) = loss.item<float>();
  }
  EXPECT_LT(last, 0.5f * first);
  EXPECT_EQ(net->parameters()[0].data_ptr<float>(), opt.flat().params().data_ptr<float>());
}

}  // namespace
}  // namespace onebit
