// The model's math flushes denormals on every thread of torch's team; other threads keep IEEE.
#include <gtest/gtest.h>
#include <omp.h>
#include <thread>
#include <vector>
#include "train/passes.hpp"
#if defined(__SSE__)
#include <xmmintrin.h>
#endif

namespace onebit::train {
namespace {

// Flush-to-zero and denormals-are-zero, as torch.set_flush_denormal(True) sets them.
[[maybe_unused]] constexpr unsigned kFlushBits = 0x8040;

TEST(FlushDenormals, EveryThreadOfTorchsTeamFlushesTheCallerOnlyWhileGuarded) {
#if !defined(__SSE__)
  GTEST_SKIP() << "reads the x86 MXCSR register";
#else
  const int before = torch::get_num_threads();
  torch::set_num_threads(2);
  // Start the team unflushed, as a trainer does before it calls flush_denormals_in_torch_threads:
  // a thread started later would inherit the flag from its creator and prove nothing.
  std::vector<unsigned> csr(2, 0);
#pragma omp parallel
  csr[static_cast<size_t>(omp_get_thread_num())] = _mm_getcsr() & kFlushBits;
  ASSERT_EQ(csr, std::vector<unsigned>(2, 0u));

  flush_denormals_in_torch_threads();
#pragma omp parallel
  csr[static_cast<size_t>(omp_get_thread_num())] = _mm_getcsr() & kFlushBits;
  EXPECT_EQ(csr[1], kFlushBits) << "torch's second thread keeps denormals";
  EXPECT_EQ(_mm_getcsr() & kFlushBits, 0u) << "the caller flushes outside a FlushDenormals";
  {
    const FlushDenormals flush;
    EXPECT_EQ(_mm_getcsr() & kFlushBits, kFlushBits);
    const at::Tensor y = torch::full({1 << 21}, 1e-39f) * 1.0f;  // spread over the team
    EXPECT_EQ((y != 0).sum().item<int64_t>(), 0);
  }
  EXPECT_EQ(_mm_getcsr() & kFlushBits, 0u);
  unsigned other = 1;  // a thread of our own (the optimizers' kind) keeps IEEE
  std::thread([&] { other = _mm_getcsr() & kFlushBits; }).join();
  EXPECT_EQ(other, 0u);
  torch::set_num_threads(before);
#endif
}

}  // namespace
}  // namespace onebit::train
