// The planner's model: the paper's volume arithmetic, unit parsing, and a calibration fit that
// recovers known constants.
#include "plan_model.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>

#include "onebit/compressed_allreduce.hpp"
#include "onebit/error.hpp"

namespace onebit::plan {
namespace {

// Spec: whole-run reduction 1/(w + (1-w)/16) against fp16; BERT-Large, 256 workers, w = 16.5%: 4.6x.
TEST(Plan, BertLargeOn256WorkersGivesThePapers46x) {
  Input in;
  in.params = 335141888;
  in.workers = 256;
  in.bandwidth = parse_bandwidth("100gbit");
  in.freeze_fraction = 0.165;
  const Plan p = make_plan(in);
  EXPECT_NEAR(p.volume_ratio_vs_fp16, 4.6, 0.01);
  EXPECT_NEAR(p.volume_ratio_vs_fp16, 1 / (0.165 + 0.835 / 16), 0.01);
  EXPECT_NEAR(p.lamb_fp16.bytes / p.onebit.bytes, 16.0, 0.05);
  EXPECT_NEAR(p.lamb_fp32.bytes / p.onebit.bytes, 32.0, 0.1);
}

TEST(Plan, SpeedupFollowsTheStepTimes) {
  Input in;
  in.params = 1e8;
  in.workers = 4;
  in.bandwidth = parse_bandwidth("1gbit");
  in.latency = 0;
  in.step_compute = 1.0;
  in.freeze_fraction = 0;
  const Plan p = make_plan(in);
  const double fp32 = 2.0 * 3 / 4 * 4e8 / 1.25e8;  // ring allreduce of 400 MB at 125 MB/s
  EXPECT_NEAR(p.lamb_fp32.seconds, fp32, 1e-9);
  EXPECT_NEAR(p.speedup_vs_fp32, (1 + fp32) / (1 + p.onebit.seconds), 1e-9);
  in.workers = 1;  // nothing to exchange: no speedup to have
  EXPECT_DOUBLE_EQ(make_plan(in).speedup_vs_fp32, 1.0);
}

// The compressed allreduce's pipeline: on a slow link the compute hides behind the wire, on a fast
// one the wire behind the compute; either way the sum of both is an upper bound.
TEST(Plan, PipelineOverlapsComputeWithTheWire) {
  Input in;
  in.workers = 4;
  in.latency = 0;
  in.cal.compute_per_element = 4e-9;  // 0.1 s for 25M elements
  const double n = 25e6, compute = n * 4e-9;
  ASSERT_GT(CompressedAllreduce::pipeline_stages(static_cast<size_t>(n), 4), 1);
  for (const char* rate : {"100mbit", "1gbit", "10gbit"}) {
    in.bandwidth = parse_bandwidth(rate);
    const double wire = compressed_allreduce_bytes(n, 4) / in.bandwidth;
    const double t = compressed_allreduce_seconds(in, n);
    EXPECT_LT(t, compute + wire) << rate;
    EXPECT_GT(t, std::max(compute, wire) * 0.6) << rate;
  }
  in.shared_cores = 2;  // four workers on two cores: each gets half a core
  EXPECT_GT(compressed_allreduce_seconds(in, n), 1.5 * compute);
}

// The all-to-alls' fixed cost per stage is hidden behind the wire like the compute is: on a slow
// link the time is the wire's plus little, on a fast one the fixed costs show in full.
TEST(Plan, PipelineHidesFixedCostsBehindASlowWire) {
  Input in;
  in.workers = 2;
  in.cal.compute_per_element = 0;
  const double n = 10e6, alpha = 2e-3;
  const int stages = CompressedAllreduce::pipeline_stages(static_cast<size_t>(n), 2);
  ASSERT_GT(stages, 2);
  const double fixed = (stages + 1.0) * alpha;  // P-1 = 1 step per collective: the all-to-alls, the all-gather
  for (const auto& [rate, hidden] : {std::pair{"100mbit", true}, std::pair{"10gbit", false}}) {
    in.bandwidth = parse_bandwidth(rate);
    const double wire = compressed_allreduce_bytes(n, 2) / in.bandwidth;
    in.latency = 0;
    const double bare = compressed_allreduce_seconds(in, n);
    in.latency = alpha;
    const double added = compressed_allreduce_seconds(in, n) - bare;
    if (hidden) {
      EXPECT_GT(wire, fixed) << rate;
      EXPECT_LT(added, 0.5 * fixed) << rate;
    } else {
      EXPECT_LT(wire, 0.1 * fixed) << rate;
      EXPECT_GT(added, 0.9 * fixed) << rate;
    }
  }
}

TEST(Plan, FitRecoversKnownConstants) {
  for (int cores : {0, 2}) {
    Input truth;
    truth.workers = 4;
    truth.bandwidth = 1.25e8;
    truth.shared_cores = cores;
    truth.cal.alpha = truth.cal.compressed_alpha = 2e-4;
    truth.cal.efficiency = 0.9;
    truth.cal.compute_per_element = 3e-9;
    truth.cal.half_alpha = 5e-4;
    truth.cal.half_efficiency = 0.6;
    truth.cal.half_compute_per_element = 4e-9;
    std::vector<Sample> samples;
    for (double n : {2.5e5, 2.5e6, 2.5e7}) {
      const double half = half_allreduce_seconds(truth, n);
      const double half_compute = n * 4e-9 * (cores ? 2.0 : 1.0);  // 4 ranks on 2 cores take turns
      samples.push_back({n, ring_allreduce_seconds(truth, n, 4), compressed_allreduce_seconds(truth, n), half,
                         half - half_compute});
    }
    const Calibration c = fit(samples, 4, 1.25e8, cores);
    EXPECT_NEAR(c.alpha, 2e-4, 1e-9);
    EXPECT_NEAR(c.efficiency, 0.9, 1e-9);
    EXPECT_NEAR(c.half_alpha, 5e-4, 1e-9);
    EXPECT_NEAR(c.half_efficiency, 0.6, 1e-9);
    EXPECT_NEAR(c.half_compute_per_element, 4e-9, 1e-15);
    // Without 16-bit samples, the 16-bit exchange takes the fp32 ring's constants.
    for (auto& s : samples) s.half_seconds = s.half_in_collectives = 0;
    const Calibration fp32_only = fit(samples, 4, 1.25e8, cores);
    EXPECT_DOUBLE_EQ(fp32_only.half_alpha, fp32_only.alpha);
    EXPECT_DOUBLE_EQ(fp32_only.half_efficiency, fp32_only.efficiency);
    EXPECT_EQ(fp32_only.half_compute_per_element, 0.0);
    EXPECT_NEAR(c.compressed_alpha, 2e-4, 1e-6) << cores << " cores";
    EXPECT_NEAR(c.compute_per_element, 3e-9, 3e-12) << cores << " cores";
  }
}

TEST(Plan, CalibrationFileRoundTrips) {
  const Calibration c =
      fit({{1e5, 0.01, 0.002, 0.008, 0.007}, {1e6, 0.05, 0.006, 0.03, 0.025}, {1e7, 0.45, 0.04, 0.3, 0.25}}, 4, 1.25e8, 2);
  const std::string path = ::testing::TempDir() + "/cal.json";
  save_calibration(path, c);
  const Calibration back = load_calibration(path);
  EXPECT_EQ(back.to_json(), c.to_json());
  std::remove(path.c_str());
}

TEST(Plan, UnitsAndBadInput) {
  EXPECT_DOUBLE_EQ(parse_bandwidth("1gbit"), 1.25e8);
  EXPECT_DOUBLE_EQ(parse_bandwidth("100mbit"), 1.25e7);
  EXPECT_DOUBLE_EQ(parse_bandwidth("2GB/s"), 2e9);
  EXPECT_DOUBLE_EQ(parse_duration("50us"), 5e-5);
  EXPECT_DOUBLE_EQ(parse_duration("1.5ms"), 1.5e-3);
  EXPECT_THROW(parse_bandwidth("fast"), Error);
  EXPECT_THROW(parse_bandwidth("10 parsecs"), Error);
  EXPECT_THROW(load_calibration("/nonexistent/cal.json"), Error);
  Input in;
  in.params = 1e6, in.workers = 2, in.bandwidth = 0;
  EXPECT_THROW(make_plan(in), Error);
}

}  // namespace
}  // namespace onebit::plan
