// The per-piece kernels each instruction set implements, as a table of plain functions. Only this
// header is shared with the ISA-specific translation units, which include nothing from the standard
// library that could be emitted out of line and picked by the linker for code on another CPU.
#pragma once
#include <cstddef>
#include <cstdint>

namespace onebit::kernels {

// The momentum over one piece: m[i] = values[i], or when values is null
// m[i] = pm(bit i, sk) (* mask[i - mask_base]) with sk = chunk scale / k (docs/algorithm.md §4 step 5).
struct MomentumPiece {
  const float* values;
  const uint8_t* bits;
  float sk;
  const float* mask;  // null, or indexed by element - mask_base
  size_t mask_base;
};

// Sums over a piece, accumulated in 16 double lanes (lane = element index % 16), folded in lane order.
struct CompressArgs {
  const float* x;  // plain input; when null the input is the scaled momentum below
  MomentumPiece m;
  const float* g;
  float beta1, one_minus_beta1, k;
  const float* prev;
  float prev_scale;
  float* next;
  uint8_t* bits;
  bool stream;  // the buffer is too large to stay in cache: write `next` around it
};

struct ServerArgs {
  const uint8_t* worker_bits;  // P chunks of `stride` bytes
  size_t stride;
  const float* scales;  // P worker scales
  int world;
  float* f;
  float f_scale;
  uint8_t* out_bits;
};

struct DecodeArgs {
  const uint8_t* bits;
  float scale;
  float* out;
  bool stream;  // bypass the cache: the output is too large to be read back from it
};

struct LambArgs {
  const float* g;
  float* m;
  float* v;
  float* w;
  // Filled by with_moments (kernels.cpp) from the optimizer's MomentParams.
  float beta1 = 0, one_minus_beta1 = 0, beta2 = 0, one_minus_beta2 = 0, eps = 0, weight_decay = 0;
  float coef;
};

struct OnebitArgs {
  MomentumPiece m, m_prev;
  const float* d;  // sqrt(v) + eps
  float* v_fresh;
  const float* w;
  // Filled by with_moments (kernels.cpp) from the optimizer's MomentParams.
  float beta1 = 0, one_minus_beta1 = 0, beta2 = 0, one_minus_beta2 = 0, eps = 0, weight_decay = 0;
};

struct FrozenArgs {
  MomentumPiece m;
  const float* d;  // sqrt(v) + eps
  float* w;
  float weight_decay, coef;
};

struct OnebitSums {
  double w_sq, u_sq, u0_sq;
  float max_ratio;
};

struct LambSums {
  double w_sq, u_sq;
};

// Every function processes elements [begin, end) of the flat buffer.
struct PieceKernels {
  double (*compress)(size_t begin, size_t end, const CompressArgs& a);
  double (*server)(size_t begin, size_t end, const ServerArgs& a);
  void (*decode)(size_t begin, size_t end, const DecodeArgs& a);
  LambSums (*lamb_norms)(size_t begin, size_t end, const LambArgs& a);
  void (*lamb_update)(size_t begin, size_t end, const LambArgs& a);
  OnebitSums (*onebit_norms)(size_t begin, size_t end, const OnebitArgs& a);
  void (*frozen_update)(size_t begin, size_t end, const FrozenArgs& a);
};

extern const PieceKernels kGenericKernels;
#if defined(__x86_64__)
extern const PieceKernels kAvx2Kernels;
extern const PieceKernels kAvx512Kernels;
#endif

}  // namespace onebit::kernels
