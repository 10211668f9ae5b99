// onebit's libtorch optimizer from an installed onebit: a torch::nn model trained with
// onebit::TorchOnebitLamb (one rank; pass a Communicator for more).
#include <torch/torch.h>

#include <cstdio>

#include "onebit/torch_optimizers.hpp"

int main() {
  torch::manual_seed(0);
  torch::nn::Sequential model(torch::nn::Linear(8, 32), torch::nn::Tanh(), torch::nn::Linear(32, 1));
  onebit::OnebitLambOptions options;
  options.lr = 5e-2f;
  options.freeze_step = 5;
  onebit::TorchOnebitLamb optimizer(model->parameters(), options);
  const torch::Tensor x = torch::randn({256, 8});
  const torch::Tensor y = torch::sin(x.sum(1, true));
  double first = 0, last = 0;
  for (int step = 0; step < 100; ++step) {
    optimizer.zero_grad();
    torch::Tensor loss = torch::mse_loss(model->forward(x), y);
    loss.backward();
    optimizer.step();
    (step == 0 ? first : last) = loss.item<double>();
  }
  std::printf("onebit torch consumer: loss %.4f -> %.4f in 100 steps\n", first, last);
  return last < 0.5 * first ? 0 : 1;
}
