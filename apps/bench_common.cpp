// The timing harness and output helpers shared by the `onebit bench` commands.
#include "bench_common.hpp"

#include <sched.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <thread>

#include "onebit/error.hpp"
#include "onebit/optimizer_registry.hpp"

namespace onebit::bench {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

double median(std::vector<double> v) {
  ONEBIT_CHECK(!v.empty(), "bench: median of no samples");
  std::sort(v.begin(), v.end());
  const size_t h = v.size() / 2;
  return v.size() % 2 ? v[h] : 0.5 * (v[h - 1] + v[h]);
}

std::vector<double> time_medians(int repeats, const std::vector<std::function<void()>>& fns) {
  ONEBIT_CHECK(repeats >= 1, "bench: repeats must be >= 1, got " << repeats);
  for (const auto& f : fns) f();
  std::vector<std::vector<double>> samples(fns.size());
  for (int r = 0; r < repeats; ++r) {
    for (size_t i = 0; i < fns.size(); ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      fns[i]();
      samples[i].push_back(seconds_since(t0));
    }
  }
  std::vector<double> out;
  for (auto& s : samples) out.push_back(median(std::move(s)));
  return out;
}

void fill_random(std::span<float> x, uint64_t seed, float scale) {
  // splitmix64 of the index: no state carried between elements, so the fill is trivially
  // reproducible and the compiler is free to vectorize it.
  const uint64_t base = seed * 0x9E3779B97F4A7C15ull;
  for (size_t i = 0; i < x.size(); ++i) {
    uint64_t z = base + (i + 1) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    const float u = static_cast<float>(z >> 40) * (1.0f / 16777216.0f);  // [0, 1), 24 bits
    x[i] = (2.0f * u - 1.0f) * scale;
  }
}

nlohmann::json machine_json() {
  std::string cpu = "unknown";
  std::ifstream info("/proc/cpuinfo");
  for (std::string line; std::getline(info, line);) {
    if (line.rfind("model name", 0) == 0) {
      const size_t colon = line.find(':');
      if (colon != std::string::npos) cpu = line.substr(line.find_first_not_of(" \t", colon + 1));
      break;
    }
  }
  // The affinity mask, as nproc reports it: a container or taskset may allow fewer CPUs than exist.
  int cores = static_cast<int>(std::thread::hardware_concurrency());
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) cores = CPU_COUNT(&set);
  return {{"cpu", cpu}, {"cores", cores}};
}

std::string positive_integer(const std::string& s) {
  const bool digits = !s.empty() && s.size() <= 19 && s.find_first_not_of("0123456789") == std::string::npos;
  return digits && std::stoull(s) > 0 ? "" : "must be a positive integer, not '" + s + "'";
}

namespace {
std::string compact(double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.10g", v);
  return buf;
}

// The number s holds, or NaN when s is not one number.
double parse_number(const std::string& s) {
  char* end = nullptr;
  const double v = s.empty() ? 0.0 : std::strtod(s.c_str(), &end);
  return s.empty() || end != s.c_str() + s.size() ? std::nan("") : v;
}
}  // namespace

std::function<std::string(const std::string&)> number_in(double lo, double hi) {
  return [lo, hi](const std::string& s) -> std::string {
    const double v = parse_number(s);
    if (v >= lo && v <= hi) return "";
    return "must be a number from " + compact(lo) + " to " + compact(hi) + ", not '" + s + "'";
  };
}

std::function<std::string(const std::string&)> positive_number() {
  return [](const std::string& s) -> std::string {
    const double v = parse_number(s);
    return v > 0 && std::isfinite(v) ? "" : "must be a number > 0, not '" + s + "'";
  };
}

std::function<std::string(const std::string&)> non_negative_number() {
  return [](const std::string& s) -> std::string {
    const double v = parse_number(s);
    return v >= 0 && std::isfinite(v) ? "" : "must be a number >= 0, not '" + s + "'";
  };
}

std::vector<std::string> optimizer_choices() {
  std::vector<std::string> names;
  for (const OptimizerKind& k : optimizer_kinds()) names.emplace_back(k.name);
  return names;
}

std::string example(const std::string& command_line) { return "Example:\n  " + command_line; }

std::string fixed(double v, int decimals) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.*f", decimals, v);
  return buf;
}

void print_table(std::ostream& os, const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> width;
  for (const auto& row : rows) {
    width.resize(std::max(width.size(), row.size()), 0);
    for (size_t c = 0; c < row.size(); ++c) width[c] = std::max(width[c], row[c].size());
  }
  for (const auto& row : rows) {
    std::string line;
    for (size_t c = 0; c < row.size(); ++c) {
      // Text left-aligned in the first column, numbers right-aligned in the others.
      const std::string pad(width[c] - row[c].size(), ' ');
      line += c == 0 ? row[c] + pad : "  " + pad + row[c];
    }
    os << line << "\n";
  }
}

void emit(const nlohmann::json& j, bool as_json, const std::string& out_file,
          const std::function<void(std::ostream&)>& print_text) {
  if (!out_file.empty()) {
    std::ofstream f(out_file);
    if (!f) throw Error("bench: cannot open '" + out_file + "' for writing");
    f << j.dump(2) << "\n";
    if (!f.flush()) throw Error("bench: writing '" + out_file + "' failed");
  }
  if (as_json) {
    std::cout << j.dump(2) << std::endl;
  } else {
    print_text(std::cout);
    std::cout.flush();
  }
}

}  // namespace onebit::bench
