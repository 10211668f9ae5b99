// The planner's alpha-beta model and its calibration (see plan_model.hpp).
#include "plan_model.hpp"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <regex>

#include "onebit/compressed_allreduce.hpp"
#include "onebit/error.hpp"

namespace onebit::plan {

nlohmann::json Calibration::to_json() const {
  return {{"calibrated", calibrated},   {"source", source},
          {"alpha_seconds", alpha},     {"compressed_alpha_seconds", compressed_alpha},
          {"bandwidth_efficiency", efficiency},
          {"half_alpha_seconds", half_alpha}, {"half_bandwidth_efficiency", half_efficiency},
          {"half_compute_seconds_per_element", half_compute_per_element},
          {"compute_seconds_per_element", compute_per_element},
          {"workers", workers},         {"cores", cores},
          {"nominal_bandwidth_bytes_per_s", nominal_bandwidth}};
}

Calibration Calibration::from_json(const nlohmann::json& j) {
  Calibration c;
  try {
    c.calibrated = j.at("calibrated").get<bool>();
    c.source = j.at("source").get<std::string>();
    c.alpha = j.at("alpha_seconds").get<double>();
    c.compressed_alpha = j.value("compressed_alpha_seconds", c.alpha);
    c.efficiency = j.at("bandwidth_efficiency").get<double>();
    c.half_alpha = j.value("half_alpha_seconds", c.alpha);
    c.half_efficiency = j.value("half_bandwidth_efficiency", c.efficiency);
    c.half_compute_per_element = j.value("half_compute_seconds_per_element", 0.0);
    c.compute_per_element = j.at("compute_seconds_per_element").get<double>();
    c.workers = j.at("workers").get<int>();
    c.cores = j.value("cores", 0);
    c.nominal_bandwidth = j.at("nominal_bandwidth_bytes_per_s").get<double>();
  } catch (const nlohmann::json::exception& e) {
    throw Error(std::string("calibration: ") + e.what());
  }
  ONEBIT_CHECK(c.alpha >= 0 && c.efficiency > 0 && c.efficiency <= 1.5 && c.compute_per_element >= 0 &&
                   c.half_alpha >= 0 && c.half_efficiency > 0 && c.half_efficiency <= 1.5 &&
                   c.half_compute_per_element >= 0,
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
// --latency when given, else the calibrated per-message time (the fp32 ring's or the compressed one's).
double alpha_of(const Input& in, double calibrated) { return in.latency >= 0 ? in.latency : calibrated; }
double seconds_per_byte(const Input& in) { return 1.0 / (in.bandwidth * in.cal.efficiency); }
}  // namespace

double ring_allreduce_seconds(const Input& in, double n, double bytes_per_element) {
  const int P = in.workers;
  if (P == 1) return 0;
  return 2.0 * (P - 1) * alpha_of(in, in.cal.alpha) + ring_allreduce_bytes(n, P, bytes_per_element) * seconds_per_byte(in);
}

namespace {
// How many ranks take turns on each core.
double core_sharing(int workers, int cores) { return cores > 0 ? std::max(1.0, static_cast<double>(workers) / cores) : 1.0; }
// a and b overlapped in `stages` equal steps: the slower one, plus the faster one's first step.
double overlapped(double a, double b, int stages) { return std::max(a, b) + std::min(a, b) / stages; }
}  // namespace

double half_allreduce_seconds(const Input& in, double n) {
  const int P = in.workers;
  if (P == 1) return 0;
  return 2.0 * (P - 1) * alpha_of(in, in.cal.half_alpha) +
         ring_allreduce_bytes(n, P, 2) / (in.bandwidth * in.cal.half_efficiency) +
         n * in.cal.half_compute_per_element * core_sharing(P, in.shared_cores);
}

double compressed_allreduce_seconds(const Input& in, double n) {
  const int P = in.workers;
  const int stages = CompressedAllreduce::pipeline_stages(static_cast<size_t>(n), P);
  // Bytes each pass moves per element of the buffer: compress reads the input and the error state
  // and writes the state and the bits; the server reads P chunks of bits and its error state, per
  // chunk element; decode reads bits and writes the output.
  const double compress_b = 12.125, server_b = (8.125 + P / 8.0) / P, decode_b = 4.125;
  const double compute = n * in.cal.compute_per_element * core_sharing(P, in.shared_cores) /
                         (compress_b + server_b + decode_b);
  const double compress = compute * compress_b, server = compute * server_b, decode = compute * decode_b;
  if (P == 1) return compress + server + decode;
  // P-1 message steps per collective: per stage one all-to-all, then one all-gather (which carries
  // the server scales), and without a pipeline the all-gather of the worker scales (the pipeline's
  // last all-to-all carries them). A stage's fixed cost, like its compute, runs while the stage
  // before it is on the wire; the all-gather and the decode after it overlap with nothing.
  const double alpha = alpha_of(in, in.cal.compressed_alpha), step = (P - 1) * alpha;
  const double half_wire = compressed_allreduce_bytes(n, P) / 2 * seconds_per_byte(in);
  const double gather = step + half_wire + server + decode;
  if (stages == 1) return step + compress + step + half_wire + gather;
  return overlapped(compress + stages * step, half_wire, stages) + gather;
}

Calibration fit(const std::vector<Sample>& samples, int P, double nominal_bandwidth, int cores) {
  ONEBIT_CHECK(samples.size() >= 2, "calibration: need at least two sizes, got " << samples.size());
  ONEBIT_CHECK(P >= 2, "calibration: needs at least 2 workers");
  // fp32: t = 2(P-1) alpha + bytes * b  -> least squares for (alpha, b); the same for the 16-bit
  // exchange, with 2-byte elements, where it was measured.
  auto linear_fit = [&](double bytes_per_element, const auto& seconds) {
    double sx = 0, sy = 0, sxx = 0, sxy = 0;
    const double k = static_cast<double>(samples.size());
    for (const auto& s : samples) {
      const double x = ring_allreduce_bytes(s.elements, P, bytes_per_element), y = seconds(s);
      sx += x, sy += y, sxx += x * x, sxy += x * y;
    }
    const double slope = (k * sxy - sx * sy) / (k * sxx - sx * sx);
    return std::pair{(sy - slope * sx) / k, slope};
  };
  const auto [a, b] = linear_fit(4, [](const Sample& s) { return s.fp32_seconds; });
  Calibration c;
  c.calibrated = true;
  c.workers = P;
  c.cores = cores;
  c.nominal_bandwidth = nominal_bandwidth;
  c.alpha = std::max(0.0, a / (2.0 * (P - 1)));
  c.efficiency = nominal_bandwidth > 0 && b > 0 ? 1.0 / (b * nominal_bandwidth) : 1.0;
  c.half_alpha = c.alpha, c.half_efficiency = c.efficiency;
  if (std::all_of(samples.begin(), samples.end(), [](const Sample& s) { return s.half_seconds > 0; })) {
    // One link rate cannot tell bytes from elements (both grow with n): the time inside the
    // collectives is the transfer's, the rest is compute. Where that split was not measured, all
    // of it counts as the transfer.
    std::vector<double> compute;
    for (const auto& s : samples)
      compute.push_back(s.half_in_collectives > 0 ? std::max(0.0, s.half_seconds - s.half_in_collectives) : 0.0);
    double sx = 0, sxy = 0;  // compute = gamma * n, least squares through zero
    for (size_t i = 0; i < samples.size(); ++i) sx += samples[i].elements * samples[i].elements, sxy += samples[i].elements * compute[i];
    c.half_compute_per_element = sx > 0 ? sxy / sx / core_sharing(P, cores) : 0.0;
    const auto [ha, hb] = linear_fit(2, [](const Sample& s) { return s.half_in_collectives > 0 ? s.half_in_collectives : s.half_seconds; });
    c.half_alpha = std::max(0.0, ha / (2.0 * (P - 1)));
    // Relative to the fp32 ring's efficiency when the link's nominal rate is unknown.
    c.half_efficiency = hb > 0 ? (nominal_bandwidth > 0 ? 1.0 / (hb * nominal_bandwidth) : b / hb) : c.efficiency;
  }
  // compressed: the pipeline model is not linear in the compute per element gamma (the overlap
  // takes maxima), so gamma and the collectives' alpha minimize the squared relative error by
  // golden-section search, gamma's nested in alpha's.
  Input model;
  model.workers = P;
  model.bandwidth = 1.0 / b;  // as achieved: efficiency is already in it
  model.shared_cores = cores;
  model.cal = c;
  model.cal.efficiency = 1.0;
  auto error = [&](double alpha, double gamma) {
    model.cal.compressed_alpha = alpha;
    model.cal.compute_per_element = gamma;
    double e = 0;
    for (const auto& s : samples) e += std::pow(compressed_allreduce_seconds(model, s.elements) / s.compressed_seconds - 1, 2);
    return e;
  };
  auto minimize = [](double lo, double hi, const auto& f) {
    for (int i = 0; i < 120; ++i) {
      const double m1 = lo + (hi - lo) * 0.381966, m2 = hi - (hi - lo) * 0.381966;
      if (f(m1) < f(m2))
        hi = m2;
      else
        lo = m1;
    }
    return (lo + hi) / 2;
  };
  // a microsecond per element is far slower than any CPU's compression; 50 ms per message, than any LAN
  auto best_gamma = [&](double alpha) { return minimize(0.0, 1e-6, [&](double g) { return error(alpha, g); }); };
  c.compressed_alpha = minimize(0.0, 0.05, [&](double a) { return error(a, best_gamma(a)); });
  c.compute_per_element = best_gamma(c.compressed_alpha);
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
