// `onebit plan --from-run`: a run directory replayed on another link, checked against hand arithmetic.
#include "plan_run.hpp"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "onebit/error.hpp"

namespace onebit::plan {
namespace {
namespace fs = std::filesystem;

// A run directory as `onebit train` writes it: summary.json and metrics.jsonl, one second of compute
// per step, `stages` in order (records may repeat steps, as a resumed run's do).
struct FakeRun {
  fs::path dir;
  explicit FakeRun(const std::string& name) : dir(fs::temp_directory_path() / ("onebit_plan_run_" + name)) {
    fs::remove_all(dir);
    fs::create_directories(dir);
  }
  ~FakeRun() { fs::remove_all(dir); }
  void write(const std::string& optimizer, const std::string& warmup_exchange,
             const std::vector<std::pair<int, std::string>>& steps) const {
    nlohmann::json s{{"parameters", 1e6}, {"world_size", 4}, {"bytes_sent", 123.0},
                     {"options", {{"batch", 8}, {"optimizer", optimizer}, {"warmup_exchange", warmup_exchange}}}};
    std::ofstream(dir / "summary.json") << s.dump();
    std::ofstream m(dir / "metrics.jsonl");
    m << R"({"heldout_loss":7.0,"samples":0,"step":0,"total_bytes_sent":0})" << "\n";
    for (const auto& [step, stage] : steps)
      m << nlohmann::json{{"step", step}, {"stage", stage}, {"compute_seconds", 1.0}, {"comm_seconds", 0.25}}.dump()
        << "\n";
  }
};

Input link_100mbit() {
  Input in;
  in.bandwidth = parse_bandwidth("100mbit");  // 12.5 MB/s, 50 us per message, no calibration
  return in;
}

// LAMB, 4 workers, 1e6 parameters: a ring allreduce sends 2*3/4 * 4 MB = 6 MB per rank, 0.48 s at
// 12.5 MB/s, plus 6 messages of 50 us: 0.4803 s a step. bf16: 3 MB, 0.2403 s.
TEST(PlanFromRun, AOnebitRunKeepsItsStagesAndLambTakesItsWarmupCompute) {
  FakeRun r("onebit");
  r.write("onebit-lamb", "bf16", {{1, "warmup"}, {2, "warmup"}, {3, "warmup"}, {4, "warmup"}, {5, "compression"},
                                  {6, "refresh"}, {7, "compression"}, {8, "compression"}, {9, "compression"},
                                  {10, "compression"}});
  const RunProfile run = load_run(r.dir.string());
  EXPECT_EQ(run.stages.size(), 10u);
  EXPECT_DOUBLE_EQ(run.measured_seconds, 12.5);
  const RunPrediction p = predict_run(run, link_100mbit(), -1);
  EXPECT_NEAR(p.lamb_seconds, 10 * (1.0 + 0.4803), 1e-9);
  const double compressed = compressed_allreduce_seconds(p.link, 1e6);
  EXPECT_GT(compressed, 0.0);
  EXPECT_LT(compressed, 0.4803 / 16);
  EXPECT_NEAR(p.onebit_seconds, 10 * 1.0 + 5 * 0.2403 + 5 * compressed, 1e-9);
  EXPECT_DOUBLE_EQ(p.warmup_fraction, 0.4);
  EXPECT_EQ(p.warmup_exchange, "bf16");
  EXPECT_NEAR(p.volume_ratio, 10 * 6e6 / (5 * 3e6 + 5 * compressed_allreduce_bytes(1e6, 4)), 1e-9);
  EXPECT_NEAR(p.speedup, p.lamb_seconds / p.onebit_seconds, 1e-12);
  EXPECT_THROW(predict_run(run, link_100mbit(), 0.2), Error);  // its own stages, not a fraction
  // The 16-bit exchange at its own calibrated efficiency: half the link's rate makes it LAMB's time.
  Input slow_half = link_100mbit();
  slow_half.cal.half_efficiency = 0.5;
  EXPECT_NEAR(predict_run(run, slow_half, -1).onebit_seconds, 10 * 1.0 + 5 * 0.4803 + 5 * compressed, 1e-9);
}

TEST(PlanFromRun, ALambRunBecomesOnebitLambWithTheAutomaticCeilingOrTheFractionGiven) {
  FakeRun r("lamb");
  std::vector<std::pair<int, std::string>> steps;
  for (int s = 1; s <= 10; ++s) steps.push_back({s, "fp32"});  // LAMB names its steps by their exchange
  r.write("lamb", "fp32", steps);
  const RunProfile run = load_run(r.dir.string());
  const double compressed = compressed_allreduce_seconds([] {
    Input in = link_100mbit();
    in.params = 1e6, in.workers = 4;
    return in;
  }(), 1e6);
  const RunPrediction ceiling = predict_run(run, link_100mbit(), -1);  // bf16 warmup, 40% of the steps
  EXPECT_EQ(ceiling.warmup_exchange, "bf16");
  EXPECT_NEAR(ceiling.onebit_seconds, 10 + 4 * 0.2403 + 6 * compressed, 1e-9);
  EXPECT_NEAR(ceiling.lamb_seconds, 10 * 1.4803, 1e-9);
  const RunPrediction fifth = predict_run(run, link_100mbit(), 0.2);
  EXPECT_NEAR(fifth.onebit_seconds, 10 + 2 * 0.2403 + 8 * compressed, 1e-9);
}

TEST(PlanFromRun, AResumedRunCountsEachStepOnce) {
  FakeRun r("resumed");
  r.write("onebit-lamb", "fp32", {{1, "warmup"}, {2, "warmup"}, {3, "compression"}, {4, "compression"},
                                  {3, "compression"}, {4, "compression"}, {5, "compression"}});
  const RunProfile run = load_run(r.dir.string());
  EXPECT_EQ(run.stages.size(), 5u);
  EXPECT_DOUBLE_EQ(run.measured_seconds, 5 * 1.25);
}

void expect_error(const std::string& dir, const std::string& part) {
  try {
    load_run(dir);
    ADD_FAILURE() << "no error for " << dir;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
  }
}

TEST(PlanFromRun, BadRunsAreNamed) {
  FakeRun r("bad");
  expect_error(r.dir.string(), "has no metrics.jsonl");
  expect_error((r.dir / "missing").string(), "is not a directory");
  r.write("onebit-adam", "fp32", {{1, "warmup"}});
  expect_error(r.dir.string(), "trained with onebit-adam");
  r.write("onebit-lamb", "int8", {{1, "warmup"}});
  expect_error(r.dir.string(), "unknown exchange precision 'int8'");
  r.write("onebit-lamb", "fp32", {{2, "warmup"}});
  expect_error(r.dir.string(), "step 2 out of order");
  r.write("onebit-lamb", "fp32", {});
  expect_error(r.dir.string(), "has no training steps");
  std::ofstream(r.dir / "metrics.jsonl") << "{not json\n";
  expect_error(r.dir.string(), "line 1 is not a step record");
  std::ofstream(r.dir / "compare.json") << "{}";
  expect_error(r.dir.string(), "holds a comparison: give one of its runs");
}

}  // namespace
}  // namespace onebit::plan
