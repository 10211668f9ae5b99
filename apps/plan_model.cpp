// The planner's alpha-beta model and its calibration (see plan_model.hpp).
#include "plan_model.hpp"

#include <cmath>
#include <fstream>
#include <regex>

#include "onebit/error.hpp"

namespace onebit::plan {

nlohmann::json Calibration::to_json() const {
  return {{"calibrated", calibrated},   {"source", source},
          {"alpha_seconds", alpha},     {"bandwidth_efficiency", efficiency},
          {"compute_seconds_per_element", compute_per_element},
          {"workers", workers},         {"nominal_bandwidth_bytes_per_s", nominal_bandwidth}};
}

Calibration Calibration::from_json(const nlohmann::json& j) {
  Calibration c;
  try {
    c.calibrated = j.at("calibrated").get<bool>();
    c.source = j.at("source").get<std::string>();
    c.alpha = j.at("alpha_seconds").get<double>();
    c.efficiency = j.at("bandwidth_efficiency").get<double>();
    c.compute_per_element = j.at("compute_seconds_per_element").get<double>();
    c.workers = j.at("workers").get<int>();
    c.nominal_bandwidth = j.at("nominal_bandwidth_bytes_per_s").get<double>();
  } catch (const nlohmann::json::exception& e) {
    throw Error(std::string("calibration: ") + e.what());
  }
  ONEBIT_CHECK(c.alpha >= 0 && c.efficiency > 0 && c.efficiency <= 1.5 && c.compute_per_element >= 0,
               "calibration: implausible constants (alpha " << c.alpha << ", efficiency " << c.efficiency
                                                             << ", compute " << c.compute_per_element << ")");
  return c;
}

Calibration load_calibration(const std::string& path) {
  std::ifstream f(path);
  ONEBIT_CHECK(f, "calibration: cannot read " << path);
  try {
    return Calibration::from_json(nlohmann::json::parse(f));
  } catch (const nlohmann::json::parse_error& e) {
    throw Error("calibration: " + path + " is not JSON: " + e.what());
  }
}

void save_calibration(const std::string& path, const Calibration& c) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp);
    ONEBIT_CHECK(f, "calibration: cannot write " << tmp);
    f << c.to_json().dump(2) << "\n";
    ONEBIT_CHECK(f.good(), "calibration: writing " << tmp << " failed");
  }
  ONEBIT_CHECK(std::rename(tmp.c_str(), path.c_str()) == 0, "calibration: cannot rename " << tmp << " to " << path);
}

double ring_allreduce_bytes(double n, int P, double bytes_per_element) {
  return 2.0 * (P - 1) / P * n * bytes_per_element;
}

double compressed_allreduce_bytes(double n, int P) {
  const double unit = 64.0 * P, padded = std::ceil(n / unit) * unit;
  // all-to-all of worker signs + all-gather of server signs, plus the two scale all-gathers
  return 2.0 * (P - 1) / P * padded / 8 + 2.0 * 4 * (P - 1);
}

namespace {
double alpha_of(const Input& in) { return in.latency >= 0 ? in.latency : in.cal.alpha; }
double seconds_per_byte(const Input& in) { return 1.0 / (in.bandwidth * in.cal.efficiency); }
}  // namespace

double ring_allreduce_seconds(const Input& in, double n, double bytes_per_element) {
  const int P = in.workers;
  if (P == 1) return 0;
  return 2.0 * (P - 1) * alpha_of(in) + ring_allreduce_bytes(n, P, bytes_per_element) * seconds_per_byte(in);
}

double compressed_allreduce_seconds(const Input& in, double n) {
  const int P = in.workers;
  // four collectives of P-1 message steps each: all-to-all, all-gather, two scale all-gathers
  const double net = P == 1 ? 0 : 4.0 * (P - 1) * alpha_of(in) + compressed_allreduce_bytes(n, P) * seconds_per_byte(in);
  return net + n * in.cal.compute_per_element;
}

Calibration fit(const std::vector<Sample>& samples, int P, double nominal_bandwidth) {
  ONEBIT_CHECK(samples.size() >= 2, "calibration: need at least two sizes, got " << samples.size());
  ONEBIT_CHECK(P >= 2, "calibration: needs at least 2 workers");
  // fp32: t = 2(P-1) alpha + bytes * b  -> least squares for (alpha, b).
  double sx = 0, sy = 0, sxx = 0, sxy = 0;
  const double k = static_cast<double>(samples.size());
  for (const auto& s : samples) {
    const double x = ring_allreduce_bytes(s.elements, P, 4);
    sx += x, sy += s.fp32_seconds, sxx += x * x, sxy += x * s.fp32_seconds;
  }
  const double b = (k * sxy - sx * sy) / (k * sxx - sx * sx);
  const double a = (sy - b * sx) / k;
  Calibration c;
  c.calibrated = true;
  c.workers = P;
  c.nominal_bandwidth = nominal_bandwidth;
  c.alpha = std::max(0.0, a / (2.0 * (P - 1)));
  c.efficiency = nominal_bandwidth > 0 && b > 0 ? 1.0 / (b * nominal_bandwidth) : 1.0;
  // compressed: t = 4(P-1) alpha + bytes * b + n * gamma -> gamma by least squares on the rest.
  double num = 0, den = 0;
  for (const auto& s : samples) {
    const double rest = s.compressed_seconds - 4.0 * (P - 1) * c.alpha - compressed_allreduce_bytes(s.elements, P) * b;
    num += rest * s.elements, den += s.elements * s.elements;
  }
  c.compute_per_element = std::max(0.0, num / den);
  c.source = "fit to " + std::to_string(samples.size()) + " sizes of `onebit bench allreduce` at " +
             std::to_string(P) + " workers";
  return c;
}

Plan make_plan(const Input& in) {
  ONEBIT_CHECK(in.params > 0, "plan: --params must be > 0");
  ONEBIT_CHECK(in.workers >= 1, "plan: --workers must be >= 1");
  ONEBIT_CHECK(in.bandwidth > 0, "plan: --bandwidth must be > 0");
  ONEBIT_CHECK(in.step_compute >= 0, "plan: --step-compute must be >= 0");
  ONEBIT_CHECK(in.freeze_fraction >= 0 && in.freeze_fraction <= 1, "plan: --freeze-fraction must be in [0, 1]");
  Plan p;
  p.in = in;
  const double n = in.params, w = in.freeze_fraction;
  p.lamb_fp32 = {"LAMB, fp32 allreduce", ring_allreduce_bytes(n, in.workers, 4), ring_allreduce_seconds(in, n, 4)};
  p.lamb_fp16 = {"LAMB, fp16 allreduce", ring_allreduce_bytes(n, in.workers, 2), ring_allreduce_seconds(in, n, 2)};
  p.onebit = {"1-bit LAMB, compression stage", compressed_allreduce_bytes(n, in.workers),
              compressed_allreduce_seconds(in, n)};
  auto volume_ratio = [&](const Exchange& base) {
    const double onebit = w * base.bytes + (1 - w) * p.onebit.bytes;
    return onebit > 0 ? base.bytes / onebit : 1.0;
  };
  auto speedup = [&](const Exchange& base) {
    const double lamb = in.step_compute + base.seconds;
    const double onebit = w * lamb + (1 - w) * (in.step_compute + p.onebit.seconds);
    return onebit > 0 ? lamb / onebit : 1.0;
  };
  p.volume_ratio_vs_fp32 = volume_ratio(p.lamb_fp32);
  p.volume_ratio_vs_fp16 = volume_ratio(p.lamb_fp16);
  p.speedup_vs_fp32 = speedup(p.lamb_fp32);
  p.speedup_vs_fp16 = speedup(p.lamb_fp16);
  return p;
}

nlohmann::json Plan::to_json() const {
  auto ex = [](const Exchange& e) {
    return nlohmann::json{{"name", e.name}, {"bytes_per_step", e.bytes}, {"comm_seconds_per_step", e.seconds}};
  };
  return {{"params", in.params},
          {"workers", in.workers},
          {"bandwidth_bytes_per_s", in.bandwidth},
          {"latency_seconds", in.latency >= 0 ? in.latency : in.cal.alpha},
          {"step_compute_seconds", in.step_compute},
          {"freeze_fraction", in.freeze_fraction},
          {"calibration", in.cal.to_json()},
          {"lamb_fp32", ex(lamb_fp32)},
          {"lamb_fp16", ex(lamb_fp16)},
          {"onebit_lamb", ex(onebit)},
          {"volume_ratio_vs_fp32", volume_ratio_vs_fp32},
          {"volume_ratio_vs_fp16", volume_ratio_vs_fp16},
          {"speedup_vs_fp32", speedup_vs_fp32},
          {"speedup_vs_fp16", speedup_vs_fp16}};
}

namespace {
double parse_with_units(const std::string& s, const std::vector<std::pair<std::string, double>>& units,
                        const char* what) {
  static const std::regex re(R"(^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([A-Za-z/]*)\s*$)");
  std::smatch m;
  ONEBIT_CHECK(std::regex_match(s, m, re), "plan: cannot read " << what << " '" << s << "'");
  const double v = std::stod(m[1]);
  const std::string unit = m[2];
  for (const auto& [name, factor] : units)
    if (unit == name) return v * factor;
  std::string known;
  for (const auto& u : units) known += (known.empty() ? "" : ", ") + (u.first.empty() ? "(none)" : u.first);
  throw Error("plan: unknown unit '" + unit + "' in " + what + " '" + s + "' (known: " + known + ")");
}
}  // namespace

double parse_bandwidth(const std::string& s) {
  return parse_with_units(s,
                          {{"", 1},
                           {"bit", 1.0 / 8}, {"kbit", 1e3 / 8}, {"mbit", 1e6 / 8}, {"gbit", 1e9 / 8},
                           {"B/s", 1}, {"KB/s", 1e3}, {"MB/s", 1e6}, {"GB/s", 1e9}},
                          "bandwidth");
}

double parse_duration(const std::string& s) {
  return parse_with_units(s, {{"", 1}, {"s", 1}, {"ms", 1e-3}, {"us", 1e-6}, {"ns", 1e-9}}, "duration");
}

}  // namespace onebit::plan
