// A training run replayed on another link (see plan_run.hpp).
#include "plan_run.hpp"

#include <filesystem>
#include <fstream>

#include "onebit/error.hpp"
#include "onebit/freeze_schedule.hpp"
#include "onebit/half_allreduce.hpp"

namespace onebit::plan {
namespace fs = std::filesystem;

RunProfile load_run(const std::string& dir) {
  const fs::path summary = fs::path(dir) / "summary.json", metrics = fs::path(dir) / "metrics.jsonl";
  ONEBIT_CHECK(fs::is_directory(dir), "plan --from-run: " << dir << " is not a directory");
  ONEBIT_CHECK(!fs::exists(fs::path(dir) / "compare.json"),
               "plan --from-run: " << dir << " holds a comparison: give one of its runs, "
                                   << (fs::path(dir) / "onebit-lamb").string() << " or " << (fs::path(dir) / "lamb").string());
  ONEBIT_CHECK(fs::exists(metrics), "plan --from-run: " << dir << " has no metrics.jsonl (a run directory of "
                                                        << "`onebit train`, or one of `onebit compare`'s)");
  ONEBIT_CHECK(fs::exists(summary), "plan --from-run: " << dir << " has no summary.json: the run did not finish");
  RunProfile r;
  r.dir = dir;
  nlohmann::json s;
  try {
    s = nlohmann::json::parse(std::ifstream(summary));
    r.params = s.at("parameters").get<double>();
    r.workers = s.at("world_size").get<int>();
    r.batch = s.at("options").at("batch").get<int64_t>();
    r.optimizer = s.at("options").at("optimizer").get<std::string>();
    r.warmup_exchange = s.at("options").value("warmup_exchange", std::string("fp32"));
    r.measured_bytes = s.at("bytes_sent").get<double>();
  } catch (const nlohmann::json::exception& e) {
    ONEBIT_FAIL("plan --from-run: " << summary.string() << " is not a summary of `onebit train`: " << e.what());
  }
  ONEBIT_CHECK(r.optimizer == "lamb" || r.optimizer == "onebit-lamb",
               "plan --from-run: the run trained with " << r.optimizer << "; the planner replays lamb and onebit-lamb runs");
  parse_wire_precision(r.warmup_exchange);  // a precision this planner knows
  std::ifstream in(metrics);
  std::string line;
  int64_t expect = 1;
  std::vector<double> seconds;  // per step: compute + communication
  for (int64_t n = 1; std::getline(in, line); ++n) {
    if (line.empty()) continue;
    int64_t step = 0;
    std::string stage;
    double compute = 0, comm = 0;
    try {
      const nlohmann::json rec = nlohmann::json::parse(line);
      if (!rec.contains("stage")) continue;  // step 0: the untrained model's held-out loss
      step = rec.at("step").get<int64_t>();
      stage = rec.at("stage").get<std::string>();
      compute = rec.at("compute_seconds").get<double>();
      comm = rec.at("comm_seconds").get<double>();
    } catch (const nlohmann::json::exception& e) {
      ONEBIT_FAIL("plan --from-run: " << metrics.string() << " line " << n << " is not a step record: " << e.what());
    }
    // A resumed run rewrites from its checkpoint: keep one record per step, in order.
    ONEBIT_CHECK(step >= 1 && step <= expect, "plan --from-run: " << metrics.string() << " line " << n
                                                                  << ": step " << step << " out of order");
    const auto kept = static_cast<size_t>(step - 1);
    r.stages.resize(kept);
    r.compute.resize(kept);
    seconds.resize(kept);
    r.stages.push_back(stage);
    r.compute.push_back(compute);
    seconds.push_back(compute + comm);
    expect = step + 1;
  }
  for (double s : seconds) r.measured_seconds += s;
  ONEBIT_CHECK(!r.stages.empty(), "plan --from-run: " << metrics.string() << " has no training steps");
  return r;
}

namespace {
double mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0 : s / static_cast<double>(v.size());
}
}  // namespace

RunPrediction predict_run(const RunProfile& run, Input link, double warmup_fraction) {
  ONEBIT_CHECK(link.bandwidth > 0, "plan: --bandwidth must be > 0");
  link.params = run.params;
  link.workers = run.workers;
  const bool onebit_run = run.optimizer == "onebit-lamb";
  const size_t steps = run.stages.size();
  // LAMB's steps are named after their exchange (fp32, bf16); a 1-bit run's uncompressed ones "warmup".
  std::vector<double> warmup_compute;
  for (size_t i = 0; i < steps; ++i)
    if (!onebit_run || run.stages[i] == "warmup") warmup_compute.push_back(run.compute[i]);
  ONEBIT_CHECK(!warmup_compute.empty(), "plan --from-run: " << run.dir << " has no warmup step to time LAMB's compute by");
  std::vector<std::string> stages = run.stages;
  // A LAMB run becomes 1-bit LAMB as `onebit train` runs it by default: a bf16 warmup exchange.
  const std::string warmup_exchange = onebit_run ? run.warmup_exchange : "bf16";
  const double half = wire_bytes(parse_wire_precision(warmup_exchange));
  if (onebit_run) {
    ONEBIT_CHECK(warmup_fraction < 0, "plan --from-run: " << run.dir << " is a 1-bit LAMB run, whose own stages are "
                                                          << "replayed; --freeze-fraction is for a LAMB run");
    warmup_fraction = static_cast<double>(warmup_compute.size()) / static_cast<double>(steps);
  } else {
    if (warmup_fraction < 0) warmup_fraction = auto_freeze_ceiling_fraction(half);
    ONEBIT_CHECK(warmup_fraction <= 1, "plan: --freeze-fraction must be in [0, 1]");
    const auto warm = static_cast<size_t>(std::llround(warmup_fraction * static_cast<double>(steps)));
    for (size_t i = 0; i < steps; ++i) stages[i] = i < warm ? "warmup" : "compression";
  }
  const double n = run.params;
  const double lamb_step = ring_allreduce_seconds(link, n, 4);
  const double warm_step = half == 4 ? lamb_step : half_allreduce_seconds(link, n);
  const double compressed_step = compressed_allreduce_seconds(link, n);
  RunPrediction p;
  p.run = run;
  p.link = link;
  p.warmup_fraction = warmup_fraction;
  p.warmup_exchange = warmup_exchange;
  const double lamb_compute = onebit_run ? mean(warmup_compute) : 0;
  for (size_t i = 0; i < steps; ++i) {
    p.lamb_seconds += (onebit_run ? lamb_compute : run.compute[i]) + lamb_step;
    p.lamb_bytes += ring_allreduce_bytes(n, run.workers, 4);
    const bool compressed = stages[i] == "compression";
    p.onebit_seconds += run.compute[i] + (compressed ? compressed_step : warm_step);
    p.onebit_bytes += compressed ? compressed_allreduce_bytes(n, run.workers) : ring_allreduce_bytes(n, run.workers, half);
  }
  p.speedup = p.onebit_seconds > 0 ? p.lamb_seconds / p.onebit_seconds : 1.0;
  p.volume_ratio = p.onebit_bytes > 0 ? p.lamb_bytes / p.onebit_bytes : 1.0;
  return p;
}

nlohmann::json RunPrediction::to_json() const {
  const double samples = static_cast<double>(run.batch) * static_cast<double>(run.stages.size());
  return {{"run", {{"dir", run.dir},
                   {"optimizer", run.optimizer},
                   {"parameters", run.params},
                   {"workers", run.workers},
                   {"steps", run.stages.size()},
                   {"batch", run.batch},
                   {"measured_train_seconds", run.measured_seconds},
                   {"measured_bytes_per_worker", run.measured_bytes}}},
          {"link", {{"bandwidth_bytes_per_s", link.bandwidth},
                    {"latency_seconds", link.latency >= 0 ? link.latency : link.cal.alpha},
                    {"shared_cores", link.shared_cores},
                    {"calibration", link.cal.to_json()}}},
          {"warmup_fraction", warmup_fraction},
          {"warmup_exchange", warmup_exchange},
          {"lamb", {{"train_seconds", lamb_seconds}, {"samples_per_second", samples / lamb_seconds},
                    {"bytes_per_worker", lamb_bytes}}},
          {"onebit_lamb", {{"train_seconds", onebit_seconds}, {"samples_per_second", samples / onebit_seconds},
                           {"bytes_per_worker", onebit_bytes}}},
          {"speedup", speedup},
          {"volume_ratio", volume_ratio}};
}

}  // namespace onebit::plan
