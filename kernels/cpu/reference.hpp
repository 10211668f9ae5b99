// Plain scalar reference for the CPU kernels, written straight from docs/algorithm.md §1-§5: explicit error
// buffers, one sequential loop per formula, sums in double in index order. Tests compare against it.
#pragma once
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "onebit/kernels.hpp"

namespace onebit::kernels::ref {

// sign(x) of §1: +1 for x >= 0 (both zeros included), else -1.
inline float sign(float x) { return x >= 0.0f ? 1.0f : -1.0f; }

// §1 bit packing: element i is byte i/8, bit i%8, LSB first; 1 means +1.
inline bool get_bit(const uint8_t* bits, size_t i) { return ((bits[i / 8] >> (i % 8)) & 1u) != 0; }
void set_bit(uint8_t* bits, size_t i, bool b);

// Layer bounds in FlatLayout::boundaries() form (layer starts, then n); empty means one layer.
std::vector<size_t> bounds_or_one(size_t n, std::span<const size_t> bounds);

// Worker compression with an explicit error e (§1): c = x + e; bits = sign(c). Returns ||c||^2.
// The error update needs the new scale, which the caller derives from the sum: see update_error.
double compress(size_t n, const float* x, const float* e, float* c, uint8_t* bits);

// Same with x = (b1*m + (1-b1)*g) * k[layer] (§4 step 3); k == nullptr means k = 1.
double compress_momentum(size_t n, std::span<const size_t> bounds, const float* m, const float* g,
                         float beta1, const float* k, const float* e, float* c, uint8_t* bits);

// e <- c - s*sign(c)   (§1, the last step of a compression).
void update_error(size_t n, const float* c, float s, float* e);

// Server over one chunk with explicit server error f (§2 step 3): y = (sum over p of s_p*sign_p)/P
// + f, the sum in fp32 from p = 0 up; out_bits = sign(y). Returns ||y||^2.
double server_average(size_t n, const uint8_t* worker_bits, size_t stride,
                      std::span<const float> worker_scales, const float* f, float* y,
                      uint8_t* out_bits);

// §2 step 5: out[i] = chunk_scales[i / chunk_len] * sign_i (chunk_len 0: one chunk).
void decode(size_t n, size_t chunk_len, const uint8_t* bits, const float* chunk_scales, float* out);

// §3, per layer: sums of w^2 and u^2 with m' = b1*m + (1-b1)*g, v' = b2*v + (1-b2)*(g*g),
// u = m'/(sqrt(v')+eps) + wd*w.
void lamb_norms(size_t n, std::span<const size_t> bounds, const float* g, const float* m,
                const float* v, const float* w, const MomentParams& p, double* w_sq, double* u_sq);

// §3: m <- m', v <- v', w <- w - coef[layer]*u.
void lamb_update(size_t n, std::span<const size_t> bounds, const float* g, float* m, float* v,
                 float* w, const MomentParams& p, const float* coef);

// §4 step 5: m = (chunk_scale*sign)/k[layer] (*mask), in docs/algorithm.md's order (k == nullptr: k = 1).
void decode_momentum(size_t n, std::span<const size_t> bounds, size_t chunk_len, const uint8_t* bits,
                     const float* chunk_scales, const float* k, const float* const* masks, float* m);

// §4 steps 6-8 (the reductions): g~ = (m - b1*m_prev)/(1-b1);
// v_fresh <- b2*v_fresh + (1-b2)*(g~*g~); d = sqrt(v)+eps; u0 = m/d; u = u0 + wd*w;
// max_ratio = max(0, max of d/(sqrt(v_fresh)+eps)).
void onebit_lamb_norms(size_t n, std::span<const size_t> bounds, const float* m, const float* m_prev,
                       const MomentParams& p, const float* v, float* v_fresh, const float* w,
                       const OnebitLambSums& out);

// §4 step 9 / §5: w <- w - coef[layer]*(m/(sqrt(v)+eps) + wd*w).
void frozen_update(size_t n, std::span<const size_t> bounds, const float* m, const float* v,
                   float* w, float eps, float weight_decay, const float* coef);

// Per-layer sum of x^2.
void layer_sq_norms(size_t n, std::span<const size_t> bounds, const float* x, double* out);

}  // namespace onebit::kernels::ref
