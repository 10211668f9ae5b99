// 1-bit LAMB on 4 in-process ranks (onebit's local backend) from an installed onebit: each rank has
// its own gradients, the optimizer exchanges them (fp32 in warmup, 1 bit per value after the freeze)
// and every rank ends with the same weights.
#include <cmath>
#include <cstdio>
#include <mutex>
#include <vector>

#include "onebit/local_comm.hpp"
#include "onebit/optimizers.hpp"

int main() {
  const onebit::FlatLayout layout({64 * 32, 32, 32});  // one entry per parameter tensor
  std::vector<std::vector<float>> finals(4);
  std::mutex mu;
  onebit::run_local(4, [&](onebit::Communicator& comm) {
    onebit::OnebitLambOptions opt;
    opt.lr = 1e-2f;
    opt.freeze_step = 3;
    onebit::OnebitLamb optimizer(layout, comm, opt);
    std::vector<float> params(layout.total(), 0.5f), grads(layout.total());
    for (int step = 1; step <= 10; ++step) {
      for (size_t i = 0; i < grads.size(); ++i)  // this rank's own gradient
        grads[i] = std::sin(0.01f * static_cast<float>(i * (comm.rank() + 1) + step));
      if (!optimizer.step(params, grads)) return;  // a rank had a NaN: every rank skipped
    }
    std::lock_guard<std::mutex> lock(mu);
    finals[comm.rank()] = params;
  });
  for (int r = 1; r < 4; ++r)
    if (finals[r] != finals[0]) {
      std::printf("rank %d differs from rank 0\n", r);
      return 1;
    }
  std::printf("onebit consumer: 4 ranks, 10 steps of 1-bit LAMB, identical weights (w[0] = %.6f)\n", finals[0][0]);
  return finals[0][0] != 0.5f ? 0 : 1;
}
