// A straightforward simulation of the compressed allreduce (docs/algorithm.md §2) over all ranks at once, with
// explicit error buffers and plain loops: the yardstick the real implementation is tested against.
#pragma once
#include <cmath>
#include <cstddef>
#include <random>
#include <span>
#include <cstring>
#include <vector>

namespace onebit::testing {

using Vec = std::vector<float>;

inline float sim_scale(const float* x, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; ++i) s += static_cast<double>(x[i]) * x[i];
  return n ? static_cast<float>(std::sqrt(s / static_cast<double>(n))) : 0.0f;
}
inline float sgn(float x) { return x >= 0.0f ? 1.0f : -1.0f; }

class SimulatedAllreduce {
 public:
  // group: 0 for docs/algorithm.md §2's scales; otherwise a scale per group of that many elements of each chunk
  // (docs/algorithm.md §12), for worker and server alike.
  SimulatedAllreduce(int world, size_t n, size_t group = 0) : P(world), n(n), group(group) {
    const size_t unit = 64 * static_cast<size_t>(P);
    chunk = (n + unit - 1) / unit * unit / static_cast<size_t>(P);
    worker_err.assign(static_cast<size_t>(P), Vec(n, 0.0f));
    server_err.assign(static_cast<size_t>(P), Vec(chunk, 0.0f));
  }

  // x[p]: rank p's input. Returns the result every rank gets.
  Vec run(const std::vector<Vec>& x) {
    std::vector<Vec> q(static_cast<size_t>(P), Vec(n));
    for (int p = 0; p < P; ++p) {
      Vec c(n);
      for (size_t i = 0; i < n; ++i) c[i] = x[p][i] + worker_err[p][i];
      for (auto [b, e] : scale_ranges(0, group ? n : 0)) {
        const float s = sim_scale(c.data() + b, e - b);
        for (size_t i = b; i < e; ++i) {
          q[p][i] = s * sgn(c[i]);
          worker_err[p][i] = c[i] - q[p][i];
        }
      }
    }
    Vec out(n);
    for (int j = 0; j < P; ++j) {
      const size_t begin = std::min(n, j * chunk), end = std::min(n, (j + 1) * chunk);
      Vec y(end - begin);
      for (size_t i = begin; i < end; ++i) {
        float sum = 0.0f;
        for (int p = 0; p < P; ++p) sum += q[p][i];
        y[i - begin] = sum / static_cast<float>(P) + server_err[j][i - begin];
      }
      for (auto [b, e] : scale_ranges(j * chunk, end)) {
        const float sj = sim_scale(y.data() + (b - begin), e - b);
        for (size_t i = b; i < e; ++i) {
          out[i] = sj * sgn(y[i - begin]);
          server_err[j][i - begin] = y[i - begin] - out[i];
        }
      }
    }
    return out;
  }

  // The ranges of real elements that share one scale: from `from` (a chunk start) to `to`, by groups
  // of `group` restarting at every chunk start; without groups, [from, to) whole (worker: all of n).
  std::vector<std::pair<size_t, size_t>> scale_ranges(size_t from, size_t to) const {
    if (!group) return {{std::min(from, n), std::max(std::min(from, n), to ? to : n)}};
    std::vector<std::pair<size_t, size_t>> r;
    for (size_t c = from; c < to; c += chunk)
      for (size_t b = c; b < std::min(to, c + chunk); b += group) r.push_back({b, std::min({b + group, c + chunk, to})});
    return r;
  }

  int P;
  size_t n, group, chunk;
  std::vector<Vec> worker_err, server_err;
};

// The 16-bit exchange (docs/algorithm.md §11) in one loop: round each rank's values, sum them in
// rank order, divide, round. x[p]: rank p's input; round and widen: to_bf16/from_bf16 or fp16's.
template <class Round, class Widen>
Vec pinned_half_average(const std::vector<Vec>& x, Round round, Widen widen) {
  Vec out(x[0].size());
  for (size_t i = 0; i < out.size(); ++i) {
    float s = widen(round(x[0][i]));
    for (size_t r = 1; r < x.size(); ++r) s += widen(round(x[r][i]));
    out[i] = widen(round(s / static_cast<float>(x.size())));
  }
  return out;
}

// Same length and the same bits (so -0.0 differs from 0.0 and a NaN equals itself).
inline bool bitwise_equal(std::span<const float> a, std::span<const float> b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size_bytes()) == 0);
}

inline Vec random_vec(size_t n, uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  Vec v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

}  // namespace onebit::testing
