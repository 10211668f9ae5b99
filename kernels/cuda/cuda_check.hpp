// CUDA_CHECK: every CUDA runtime call in onebit goes through it; a failure throws onebit::Error
// naming the call, the CUDA error and file:line.
#pragma once
#include <cuda_runtime.h>

#include "onebit/error.hpp"

#define CUDA_CHECK(call)                                                                     \
  do {                                                                                       \
    const cudaError_t onebit_cuda_rc_ = (call);                                              \
    if (onebit_cuda_rc_ != cudaSuccess)                                                      \
      ONEBIT_CHECK(false, "cuda: " #call " failed: " << cudaGetErrorName(onebit_cuda_rc_)    \
                                                     << " (" << cudaGetErrorString(onebit_cuda_rc_) << ")"); \
  } while (0)

// After a kernel launch: reports a bad launch configuration at the launch, not at the next sync.
#define CUDA_CHECK_LAUNCH(what)                                                              \
  do {                                                                                       \
    const cudaError_t onebit_cuda_rc_ = cudaGetLastError();                                  \
    if (onebit_cuda_rc_ != cudaSuccess)                                                      \
      ONEBIT_CHECK(false, "cuda: launch of " << (what) << " failed: "                        \
                                             << cudaGetErrorName(onebit_cuda_rc_) << " ("    \
                                             << cudaGetErrorString(onebit_cuda_rc_) << ")"); \
  } while (0)
