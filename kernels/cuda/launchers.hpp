// Launch details of onebit/cuda_kernels.hpp that are not user API: a DevicePartition's device
// arrays (for the launchers in this folder), and the per-layer scalar math that only onebit's own
// device optimizers (optim/cuda) run. Not installed; onebit's device code reaches this folder through
// the onebit_cuda_private CMake target. Needs no CUDA headers.
#pragma once
#include <cstddef>
#include <cstdint>

#include "onebit/cuda_kernels.hpp"
#include "onebit/kernels.hpp"

namespace onebit::cuda {

namespace detail {

// A DevicePartition's device arrays (DevicePartition befriends this struct).
struct PartitionArrays {
  using P = DevicePartition;
  static const void* pieces(const P& p) { return p.pieces_.data(); }  // in kernels::Piece layout
  static const uint32_t* block_first(const P& p) { return p.block_first_.data(); }  // num_blocks + 1
  static const uint32_t* layer_first(const P& p) { return p.layer_first_.data(); }  // num_layers + 1 piece indices
  static const uint32_t* all_pieces(const P& p) { return p.all_pieces_.data(); }    // {0, num_pieces}
  static const uint64_t* layer_start(const P& p) { return p.layer_start_.data(); }  // num_layers + 1
  static const uint32_t* group_first(const P& p) { return p.group_first_.data(); }  // num_groups + 1 piece indices
  static const uint64_t* group_size(const P& p) { return p.group_size_.data(); }    // elements per scale group
  static double* lanes(const P& p) { return p.lanes_.data(); }  // 4 * num_pieces * 16 partial sums
  static int* flag(const P& p) { return p.flag_.data(); }       // a skip flag for callers that pass none
};

}  // namespace detail

// --- per-layer scalar math, on the device so a step needs no host round trip -------------------

// LAMB trust ratios (docs/algorithm.md §3), as Optimizer::lamb_ratios then the coefficient loop: if any layer's
// w_sq or u_sq is not finite, sets *skip and writes nothing. Otherwise coef[l] = lr * ratio (or
// lr when trust_ratio is false: 1-bit Adam's warmup), and, when c_freeze is given, the 1-bit LAMB
// warmup average c_freeze <- coeff_beta*c_freeze + (1-coeff_beta)*ratio for ratio != 1.
struct LambCoefArgs {
  const double* w_sq;
  const double* u_sq;
  size_t layers;
  float lr, min_coeff, max_coeff;
  bool trust_ratio;
  float* coef;
  float* c_freeze;  // may be null
  float coeff_beta;
};
void lamb_coefficients(const LambCoefArgs& a, int* skip, Stream stream);

// 1-bit LAMB §4 step 8: the factor per layer, last_factor, and coef = lr * (c_freeze * factor).
struct OnebitCoefArgs {
  kernels::OnebitLambSums sums;  // device arrays
  size_t layers;
  float lr, weight_decay, factor_min, factor_max, factor_threshold;
  const float* c_freeze;
  float* last_factor;
  float* coef;
  bool hold_factor;  // with refreshes: coef = lr * c_freeze, the factor left as it is
};
void onebit_lamb_coefficients(const OnebitCoefArgs& a, Stream stream, const int* skip = nullptr);

// 1-bit LAMB §4 step 1: k_l = mean_l(s_l) / s_l with s_l = ||m_l|| / sqrt(n_l), from m_sq.
void momentum_scales(const DevicePartition& part, const double* m_sq, float* k, Stream stream,
                     const int* skip = nullptr);

// Sets *skip when one of x[0..n) is not finite.
void flag_nonfinite(const double* x, size_t n, int* skip, Stream stream);
void flag_nonfinite(const float* x, size_t n, int* skip, Stream stream);

// OnebitLamb::track_scales after the all-reduce of each layer's sum of g^2 over the ranks (`sum`,
// fp32): sets *skip if one is not finite; otherwise g_rms and k as on the CPU, one thread, layers in
// order.
void track_scales(const DevicePartition& part, const float* sum, int world, float beta1, float* g_rms, float* k,
                  int* skip, Stream stream);

// Widens per-layer sums to the fp32 values the CPU all-reduces (static_cast<float>).
void to_float(const double* x, float* out, size_t n, Stream stream, const int* skip = nullptr);

// OnebitLamb::refresh_step's momentum before its exchange: x[i] <- beta1*m[i] + (1-beta1)*g[i] +
// e*(1/k[layer]), e the worker error and, on this rank's chunk (`rank`), plus world times the
// server error (the server's partition is cut as the chunk: group q of the worker partition is
// its group q - rank*groups_per_chunk).
struct RefreshArgs {
  kernels::Momentum m;
  const float* g;
  float beta1;
  const float* k;
  const float* worker_c;
  ScalesIn worker_scales;
  const float* server_c;
  ScalesIn server_scales;
  size_t groups_per_chunk;
  int rank, world;
  float* x;
};
void refresh_momentum(const DevicePartition& part, const RefreshArgs& a, Stream stream, const int* skip);

// x[i] <- x[i] * masks[layer][i - layer start] where a layer has a mask (masks: a device array of
// num_layers() device pointers).
void apply_masks(const DevicePartition& part, float* x, const float* const* masks, Stream stream, const int* skip);

// The refresh's trust ratios: per layer r = clamp(||w|| / ||u||, min, max) (1 where a norm is 0),
// c_freeze = r, last_factor = 1, coef = lr * c_freeze.
struct RefreshCoefArgs {
  const double* w_sq;
  const double* u_sq;
  size_t layers;
  float lr, min_coeff, max_coeff;
  float* c_freeze;
  float* last_factor;
  float* coef;
};
void refresh_coefficients(const RefreshCoefArgs& a, Stream stream, const int* skip);

}  // namespace onebit::cuda
