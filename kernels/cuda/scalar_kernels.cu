// Per-layer scalar math of the optimizers on the device (LAMB trust ratios, 1-bit LAMB factors,
// momentum scales), so one step needs no host round trip. Mirrors optim/optimizer.cpp and
// optim/onebit_lamb.cpp expression for expression, including which operands are float or double.
#include "launch.cuh"

namespace onebit::cuda {
namespace detail {
namespace {

// std::clamp and std::min as the CPU code calls them (the same comparisons, so NaN goes the same way).
__device__ double clamp_d(double v, double lo, double hi) { return v < lo ? lo : (hi < v ? hi : v); }
__device__ double min_d(double a, double b) { return b < a ? b : a; }

constexpr int kScalarThreads = 512;

// One block: the non-finite check must see every layer before any layer's state changes.
// LAMB's trust ratio from the per-layer sums of squares: clamp(||w|| / ||u||, min, max), 1 where a
// norm is 0 (optim/optimizer.cpp's lamb_ratios).
__device__ double trust_ratio(double w_sq, double u_sq, float min_coeff, float max_coeff) {
  return w_sq > 0 && u_sq > 0 ? clamp_d(sqrt(w_sq) / sqrt(u_sq), static_cast<double>(min_coeff),
                                        static_cast<double>(max_coeff))
                              : 1.0;
}

__global__ void __launch_bounds__(kScalarThreads) lamb_coef_kernel(LambCoefArgs a, int* skip) {
  if (*skip) return;
  bool bad = false;
  for (size_t l = threadIdx.x; l < a.layers; l += kScalarThreads)
    if (!isfinite(a.u_sq[l]) || !isfinite(a.w_sq[l])) bad = true;
  if (__syncthreads_or(bad)) {
    if (threadIdx.x == 0) *skip = 1;
    return;
  }
  for (size_t l = threadIdx.x; l < a.layers; l += kScalarThreads) {
    const double ratio = trust_ratio(a.w_sq[l], a.u_sq[l], a.min_coeff, a.max_coeff);
    a.coef[l] = a.trust_ratio ? a.lr * static_cast<float>(ratio) : a.lr;
    if (a.c_freeze && ratio != 1.0) {
      // coeff_beta * c_freeze is a float product, (1 - coeff_beta) a float, the rest double.
      const float decayed = a.coeff_beta * a.c_freeze[l];
      const float rest = 1.0f - a.coeff_beta;
      a.c_freeze[l] = static_cast<float>(decayed + rest * ratio);
    }
  }
}

__global__ void __launch_bounds__(kScalarThreads) onebit_coef_kernel(OnebitCoefArgs a, const int* skip) {
  if (skip && *skip) return;
  const size_t l = blockIdx.x * size_t{kScalarThreads} + threadIdx.x;
  if (l >= a.layers) return;
  if (a.hold_factor) {
    a.coef[l] = a.lr * a.c_freeze[l];
    return;
  }
  double f = a.sums.max_ratio[l];
  if (a.weight_decay > 0 && a.sums.u_sq[l] > 0) {
    const double rho = min_d(1.0, sqrt(a.sums.u0_sq[l]) / sqrt(a.sums.u_sq[l]));
    f = rho * f + (1 - rho);
  }
  f = clamp_d(f, static_cast<double>(a.factor_min), static_cast<double>(a.factor_max));
  const double last = a.last_factor[l];
  f = clamp_d(f, last * (1 - a.factor_threshold), last * (1 + a.factor_threshold));
  a.last_factor[l] = static_cast<float>(f);
  a.coef[l] = a.lr * (a.c_freeze[l] * a.last_factor[l]);
}

// One thread: the mean is a sequential sum in layer order, as on the CPU. Runs once per run.
__global__ void momentum_scales_kernel(const uint64_t* start, size_t layers, const double* m_sq, float* k,
                                       const int* skip) {
  if (threadIdx.x != 0 || blockIdx.x != 0 || (skip && *skip)) return;
  auto scale = [&](size_t l) {
    const uint64_t n = start[l + 1] - start[l];
    return n ? sqrt(m_sq[l] / static_cast<double>(n)) : 0.0;
  };
  double mean = 0;
  for (size_t l = 0; l < layers; ++l) mean += scale(l) / static_cast<double>(layers);
  for (size_t l = 0; l < layers; ++l) {
    const double s = scale(l);
    k[l] = s > 0 ? static_cast<float>(mean / s) : 1.0f;
  }
}

template <class T>
__global__ void flag_nonfinite_kernel(const T* x, size_t n, int* skip) {
  if (*skip) return;
  bool bad = false;
  for (size_t i = threadIdx.x; i < n; i += kScalarThreads)
    if (!isfinite(x[i])) bad = true;
  if (__syncthreads_or(bad) && threadIdx.x == 0) *skip = 1;
}

// One thread, layers in order (the mean is a sequential double sum), with the CPU's operand types:
// sum / world is a float division, then a double one.
__global__ void track_scales_kernel(const uint64_t* start, size_t layers, const float* sum, int world, float beta1,
                                    float* g_rms, float* k, int* skip) {
  if (threadIdx.x != 0 || blockIdx.x != 0 || *skip) return;
  for (size_t l = 0; l < layers; ++l)
    if (!isfinite(sum[l])) {
      *skip = 1;
      return;
    }
  double mean = 0;
  for (size_t l = 0; l < layers; ++l) {
    const float per_rank = sum[l] / static_cast<float>(world);
    const float rms = static_cast<float>(sqrt(per_rank / static_cast<double>(start[l + 1] - start[l])));
    g_rms[l] = g_rms[l] == 0 ? rms : beta1 * g_rms[l] + (1 - beta1) * rms;
    mean += g_rms[l] / static_cast<double>(layers);
  }
  for (size_t l = 0; l < layers; ++l) k[l] = g_rms[l] > 0 ? static_cast<float>(mean / g_rms[l]) : 1.0f;
}

__global__ void to_float_kernel(const double* x, float* out, size_t n, const int* skip) {
  if (skip && *skip) return;
  for (size_t i = threadIdx.x; i < n; i += kScalarThreads) out[i] = static_cast<float>(x[i]);
}

__global__ void __launch_bounds__(kScalarThreads) refresh_coef_kernel(RefreshCoefArgs a, const int* skip) {
  if (skip && *skip) return;
  const size_t l = blockIdx.x * size_t{kScalarThreads} + threadIdx.x;
  if (l >= a.layers) return;
  a.c_freeze[l] = static_cast<float>(trust_ratio(a.w_sq[l], a.u_sq[l], a.min_coeff, a.max_coeff));
  a.last_factor[l] = 1.0f;
  a.coef[l] = a.lr * a.c_freeze[l];
}

unsigned layer_blocks(size_t layers) { return static_cast<unsigned>((layers + kScalarThreads - 1) / kScalarThreads); }

}  // namespace
}  // namespace detail

using namespace detail;

void lamb_coefficients(const LambCoefArgs& a, int* skip, Stream stream) {
  ONEBIT_CHECK(skip, "cuda lamb_coefficients: needs a skip flag");
  if (a.layers == 0) return;
  lamb_coef_kernel<<<1, kScalarThreads, 0, stream>>>(a, skip);
  CUDA_CHECK_LAUNCH("lamb_coefficients");
}

void onebit_lamb_coefficients(const OnebitCoefArgs& a, Stream stream, const int* skip) {
  if (a.layers == 0) return;
  onebit_coef_kernel<<<layer_blocks(a.layers), kScalarThreads, 0, stream>>>(a, skip);
  CUDA_CHECK_LAUNCH("onebit_lamb_coefficients");
}

void momentum_scales(const DevicePartition& part, const double* m_sq, float* k, Stream stream, const int* skip) {
  if (part.num_layers() == 0) return;
  momentum_scales_kernel<<<1, 32, 0, stream>>>(PartitionArrays::layer_start(part), part.num_layers(), m_sq, k, skip);
  CUDA_CHECK_LAUNCH("momentum_scales");
}

void flag_nonfinite(const double* x, size_t n, int* skip, Stream stream) {
  if (n == 0) return;
  flag_nonfinite_kernel<<<1, kScalarThreads, 0, stream>>>(x, n, skip);
  CUDA_CHECK_LAUNCH("flag_nonfinite");
}

void flag_nonfinite(const float* x, size_t n, int* skip, Stream stream) {
  if (n == 0) return;
  flag_nonfinite_kernel<<<1, kScalarThreads, 0, stream>>>(x, n, skip);
  CUDA_CHECK_LAUNCH("flag_nonfinite");
}

void track_scales(const DevicePartition& part, const float* sum, int world, float beta1, float* g_rms, float* k,
                  int* skip, Stream stream) {
  if (part.num_layers() == 0) return;
  track_scales_kernel<<<1, 32, 0, stream>>>(PartitionArrays::layer_start(part), part.num_layers(), sum, world, beta1,
                                            g_rms, k, skip);
  CUDA_CHECK_LAUNCH("track_scales");
}

void to_float(const double* x, float* out, size_t n, Stream stream, const int* skip) {
  if (n == 0) return;
  to_float_kernel<<<1, kScalarThreads, 0, stream>>>(x, out, n, skip);
  CUDA_CHECK_LAUNCH("to_float");
}

void refresh_coefficients(const RefreshCoefArgs& a, Stream stream, const int* skip) {
  if (a.layers == 0) return;
  refresh_coef_kernel<<<layer_blocks(a.layers), kScalarThreads, 0, stream>>>(a, skip);
  CUDA_CHECK_LAUNCH("refresh_coefficients");
}

}  // namespace onebit::cuda
