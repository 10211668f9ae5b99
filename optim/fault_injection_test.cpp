// FaultyCommunicator: it corrupts exactly the planned contributions of its own rank and forwards
// everything else unchanged, and a fault it plants is skipped by every optimizer, in every stage,
// exactly as a NaN in that rank's gradient is.
#include "onebit/fault_injection.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <numeric>
#include <random>
#include <sstream>

#include "onebit/compressed_allreduce.hpp"
#include "../tests/error_of.hpp"
#include "onebit/error.hpp"
#include "onebit/half_allreduce.hpp"
#include "onebit/local_comm.hpp"
#include "onebit/optimizers.hpp"

namespace onebit {
namespace {

// The decorator over run_local's communicator, which it does not own.
std::shared_ptr<Communicator> borrowed(Communicator& comm) {
  return std::shared_ptr<Communicator>(&comm, [](Communicator*) {});
}

bool all_poison(std::span<const std::byte> b) {
  return std::all_of(b.begin(), b.end(), [](std::byte x) { return x == std::byte{0xFF}; });
}

template <class T>
std::span<const std::byte> bytes_of(const std::vector<T>& v, size_t first, size_t count) {
  return std::as_bytes(std::span(v)).subspan(first * sizeof(T), count * sizeof(T));
}

using test::error_of;

TEST(FaultPlan, ParsesRankStepItemsAndNamesTheFirstBadOne) {
  EXPECT_EQ(parse_fault_plan("1:2"), (FaultPlan{{1, 2}}));
  EXPECT_EQ(parse_fault_plan("1:2,0:5,1:2"), (FaultPlan{{1, 2}, {0, 5}, {1, 2}}));
  for (const auto& [spec, bad] : std::vector<std::pair<std::string, std::string>>{
           {"", ""}, {"1", "1"}, {"1:2,", ""}, {"1:2,x:3", "x:3"}, {"1:0", "1:0"}, {"-1:2", "-1:2"},
           {"1:2:3", "1:2:3"}, {"1: 2", "1: 2"}, {"0:5,,1:2", ""}, {"1:2x", "1:2x"}}) {
    const std::string& text = spec;  // clang 14 does not capture structured bindings
    const std::string what = error_of([&] { parse_fault_plan(text, "--inject-nonfinite"); });
    EXPECT_EQ(what, "--inject-nonfinite: '" + bad + "' is not RANK:STEP (a rank >= 0 and a step >= 1)") << spec;
  }
}

TEST(FaultyCommunicator, RefusesAPlanOutsideTheWorldOrForOneRank) {
  run_local(2, [](Communicator& comm) {
    EXPECT_EQ(error_of([&] { FaultyCommunicator(borrowed(comm), {{2, 1}}, nullptr); }),
              "fault injection: the plan names rank 2, the world has 2 ranks");
  });
  run_local(1, [](Communicator& comm) {
    const std::string why = error_of([&] { FaultyCommunicator(borrowed(comm), {{0, 1}}, nullptr); });
    EXPECT_NE(why.find("plan faults for 2 or more ranks"), std::string::npos) << why;
    FaultyCommunicator without_faults(borrowed(comm), {}, nullptr);  // a pass-through is fine anywhere
    EXPECT_EQ(without_faults.size(), 1);
  });
}

// Every collective, with the plan's other ranks and other steps: the same bytes as the bare
// communicator, and the same counts.
TEST(FaultyCommunicator, ForwardsEverythingUnplannedUnchanged) {
  const int P = 3;
  run_local(P, [&](Communicator& bare) {
    std::ostringstream log;
    FaultyCommunicator comm(borrowed(bare), {{(bare.rank() + 1) % P, 1}, {bare.rank(), 7}}, &log);
    EXPECT_EQ(comm.rank(), bare.rank());
    EXPECT_EQ(comm.size(), P);
    EXPECT_EQ(comm.backend(), bare.backend());
    EXPECT_EQ(comm.planned_steps(), std::set<int64_t>{7});
    comm.begin_step(1);  // another rank's fault
    EXPECT_FALSE(comm.armed());
    const int r = comm.rank();
    std::vector<float> x(5);
    std::iota(x.begin(), x.end(), static_cast<float>(r));
    comm.allreduce_sum(x);
    for (int i = 0; i < 5; ++i) EXPECT_EQ(x[static_cast<size_t>(i)], static_cast<float>(P * i + P * (P - 1) / 2));
    std::vector<int> send(P), recv(P);
    for (int j = 0; j < P; ++j) send[static_cast<size_t>(j)] = 100 * r + j;
    comm.alltoall(std::as_bytes(std::span(send)), std::as_writable_bytes(std::span(recv)));
    for (int j = 0; j < P; ++j) EXPECT_EQ(recv[static_cast<size_t>(j)], 100 * j + r);
    std::vector<int> all(P);
    comm.allgather_values(std::span<const int>(&r, 1), std::span<int>(all));
    for (int j = 0; j < P; ++j) EXPECT_EQ(all[static_cast<size_t>(j)], j);
    int v = r == 2 ? 42 : 0;
    comm.broadcast(std::as_writable_bytes(std::span(&v, 1)), 2);
    EXPECT_EQ(v, 42);
    comm.barrier();
    EXPECT_EQ(comm.injected(), 0);
    EXPECT_EQ(log.str(), "");
    // The decorator counts what it forwards as the communicator under it does.
    EXPECT_EQ(comm.stats().bytes_sent, bare.stats().bytes_sent);
    EXPECT_EQ(comm.stats().bytes_received, bare.stats().bytes_received);
    EXPECT_EQ(comm.stats().calls, bare.stats().calls);
  });
}

// One collective per case, the fault on rank 1 only: what rank 1 contributes is all 0xFF on every
// rank, what the others contribute arrives as sent, the fault is spent, and the next collective is
// clean again.
TEST(FaultyCommunicator, CorruptsExactlyThisRanksPlannedContributionOnce) {
  const int P = 3, faulty = 1;
  for (const char* op : {"allreduce_sum", "alltoall", "allgather", "broadcast"}) {
    SCOPED_TRACE(op);
    run_local(P, [&](Communicator& bare) {
      std::ostringstream log;
      FaultyCommunicator comm(borrowed(bare), {{faulty, 4}}, &log);
      const int r = comm.rank();
      comm.begin_step(3);
      EXPECT_FALSE(comm.armed());
      comm.begin_step(4);
      EXPECT_EQ(comm.armed(), r == faulty);
      // A barrier, and a broadcast this rank only receives, carry nothing of this rank's: the fault waits.
      comm.barrier();
      int from0 = r == 0 ? 7 : 0;
      comm.broadcast(std::as_writable_bytes(std::span(&from0, 1)), 0);
      EXPECT_EQ(from0, 7);
      EXPECT_EQ(comm.armed(), r == faulty);
      const std::string opname = op;
      if (opname == "allreduce_sum") {
        std::vector<float> x(6, static_cast<float>(r + 1));
        comm.allreduce_sum(x);
        for (float v : x) EXPECT_TRUE(std::isnan(v));  // NaN + anything: the whole sum, on every rank
      } else if (opname == "alltoall") {
        std::vector<uint16_t> send(2 * P), recv(2 * P);  // two 16-bit values per chunk
        for (size_t i = 0; i < send.size(); ++i) send[i] = static_cast<uint16_t>(1000 * r + i);
        const auto sent = send;
        comm.alltoall(std::as_bytes(std::span(send)), std::as_writable_bytes(std::span(recv)));
        EXPECT_EQ(send, sent);  // the caller's buffer is left alone
        for (int j = 0; j < P; ++j) {
          const auto chunk = bytes_of(recv, 2 * static_cast<size_t>(j), 2);
          if (j == faulty) {
            EXPECT_TRUE(all_poison(chunk));
            EXPECT_TRUE(std::isnan(from_bf16(recv[2 * static_cast<size_t>(j)])));
            EXPECT_TRUE(std::isnan(from_fp16(recv[2 * static_cast<size_t>(j)])));
          } else {
            EXPECT_EQ(recv[2 * static_cast<size_t>(j)], 1000 * j + 2 * r);
            EXPECT_EQ(recv[2 * static_cast<size_t>(j) + 1], 1000 * j + 2 * r + 1);
          }
        }
      } else if (opname == "allgather") {
        const std::vector<float> mine{static_cast<float>(r), 0.5f};
        std::vector<float> all(2 * P);
        comm.allgather_values(std::span<const float>(mine), std::span<float>(all));
        for (int j = 0; j < P; ++j) {
          if (j == faulty) {
            EXPECT_TRUE(all_poison(bytes_of(all, 2 * static_cast<size_t>(j), 2)));
            EXPECT_TRUE(std::isnan(all[2 * static_cast<size_t>(j)]));
          } else {
            EXPECT_EQ(all[2 * static_cast<size_t>(j)], static_cast<float>(j));
            EXPECT_EQ(all[2 * static_cast<size_t>(j) + 1], 0.5f);
          }
        }
      } else {
        std::vector<float> data(3, r == faulty ? 2.5f : 0.0f);
        comm.broadcast(std::as_writable_bytes(std::span(data)), faulty);
        for (float v : data) EXPECT_TRUE(std::isnan(v));
      }
      EXPECT_FALSE(comm.armed());
      EXPECT_EQ(comm.injected(), r == faulty ? 1 : 0);
      EXPECT_EQ(log.str(), r == faulty ? "onebit: rank 1 injects a NaN into its " + opname +
                                             " contribution at step 4 (fault injection)\n"
                                       : "");
      // Spent: the next collective of the same step is clean.
      std::vector<float> y(4, 1.0f);
      comm.allreduce_sum(y);
      for (float v : y) EXPECT_EQ(v, static_cast<float>(P));
      comm.begin_step(5);
    });
  }
}

TEST(FaultyCommunicator, AFaultThatFindsNoCollectiveIsAnError) {
  run_local(2, [](Communicator& bare) {
    FaultyCommunicator comm(borrowed(bare), {{0, 2}, {1, 2}}, nullptr);
    comm.begin_step(2);
    comm.barrier();
    EXPECT_EQ(error_of([&] { comm.begin_step(3); }),
              "fault injection on rank " + std::to_string(comm.rank()) +
                  ": the non-finite contribution planned for step 2 found no collective to travel in");
  });
}

// The exchanges themselves: a fault in one rank's contribution shows where their finiteness checks look.
TEST(FaultyCommunicator, ReachesTheExchangesFinitenessChecks) {
  const int P = 3;
  const size_t n = 1000;
  for (auto precision : {WirePrecision::kBf16, WirePrecision::kFp16}) {
    run_local(P, [&](Communicator& bare) {
      FaultyCommunicator comm(borrowed(bare), {{2, 1}}, nullptr);
      ThreadPool pool(1);
      HalfAllreduce half(comm, pool, n, precision);
      std::vector<float> x(n, 0.25f * static_cast<float>(comm.rank() + 1));
      comm.begin_step(1);
      half.average(x);
      EXPECT_TRUE(std::any_of(x.begin(), x.end(), [](float v) { return !std::isfinite(v); }));
    });
  }
  for (size_t group : {size_t{0}, size_t{128}}) {
    SCOPED_TRACE("scale group " + std::to_string(group));
    run_local(P, [&](Communicator& bare) {
      FaultyCommunicator comm(borrowed(bare), {{0, 2}}, nullptr);
      ThreadPool pool(1);
      CompressedAllreduce ar(comm, pool, n, {}, group);
      std::vector<float> x(n);
      for (size_t i = 0; i < n; ++i) x[i] = std::sin(static_cast<float>(i + 17 * comm.rank()));
      comm.begin_step(1);
      EXPECT_TRUE(ar.compress(x));
      ar.exchange();
      const auto error = ar.worker_error();
      comm.begin_step(2);
      EXPECT_FALSE(ar.compress(x));  // every rank: rank 0's scale (or flag) arrived as a NaN
      EXPECT_EQ(ar.worker_error(), error);  // and nothing changed
      comm.begin_step(3);
      EXPECT_TRUE(ar.compress(x));
    });
  }
}

// --- the optimizers: an injected fault is a NaN gradient, step for step -----------------------

const std::vector<size_t> kSizes = {300, 17, 1000, 64, 1, 2500, 129};

std::vector<float> gradient(int t, int p) {
  const auto ut = static_cast<unsigned>(t), up = static_cast<unsigned>(p);
  std::mt19937_64 shared(7u * ut), own(1000003u * ut + up);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> g;
  for (size_t l = 0; l < kSizes.size(); ++l)
    for (size_t i = 0; i < kSizes[l]; ++i)
      g.push_back(1e-2f * static_cast<float>(l % 3 + 1) * (d(shared) + 0.5f * d(own)));
  return g;
}

struct Case {
  const char* name;
  std::function<std::unique_ptr<Optimizer>(const FlatLayout&, Communicator&)> make;
};

struct Trace {
  std::vector<std::string> stages;  // each step's stage (the same on every rank)
  std::vector<bool> applied;
  std::vector<std::vector<float>> weights;  // per rank, at the end
  std::vector<int64_t> skipped;             // per rank
};

// `steps` steps on P ranks; at the planned steps rank `bad`'s gradient holds a NaN (inject false) or
// its communicator plants one (inject true).
Trace run(const Case& c, int P, int steps, const FaultPlan& plan, bool inject) {
  const FlatLayout layout(kSizes);
  Trace t;
  t.weights.resize(static_cast<size_t>(P));
  t.skipped.resize(static_cast<size_t>(P));
  run_local(P, [&](Communicator& bare) {
    const int r = bare.rank();
    FaultyCommunicator faulty(borrowed(bare), inject ? plan : FaultPlan{}, nullptr);
    auto opt = c.make(layout, faulty);
    std::vector<float> w(layout.total());
    for (size_t i = 0; i < w.size(); ++i) w[i] = 0.05f * std::cos(static_cast<float>(i));
    for (int s = 1; s <= steps; ++s) {
      std::vector<float> g = gradient(s, r);
      if (!inject)
        for (const PlannedFault& f : plan)
          if (f.rank == r && f.step == s) g[1234] = std::numeric_limits<float>::quiet_NaN();
      const std::string stage = opt->next_stage();
      faulty.begin_step(s);
      const bool applied = opt->step(w, g);
      if (r == 0) t.stages.push_back(stage), t.applied.push_back(applied);
    }
    t.weights[static_cast<size_t>(r)] = w;
    t.skipped[static_cast<size_t>(r)] = opt->skipped();
  });
  return t;
}

TEST(FaultyCommunicator, AnInjectedFaultIsSkippedLikeANanGradientInEveryStage) {
  const int P = 3, steps = 9;
  auto lamb1 = [](WirePrecision warm, int64_t group, int track, int64_t refresh) {
    return [=](const FlatLayout& l, Communicator& c) -> std::unique_ptr<Optimizer> {
      OnebitLambOptions o;
      o.lr = 1e-2f, o.freeze_step = 3, o.warmup_exchange = warm;
      o.scale_group = group, o.track_scales = track, o.refresh_interval = refresh;
      return std::make_unique<OnebitLamb>(l, c, o);
    };
  };
  const std::vector<Case> cases = {
      {"lamb fp32", [](const FlatLayout& l, Communicator& c) -> std::unique_ptr<Optimizer> {
         LambOptions o;
         o.lr = 1e-2f;
         return std::make_unique<Lamb>(l, c, o);
       }},
      {"onebit-lamb fp32, spec scales", lamb1(WirePrecision::kFp32, 0, 0, 0)},
      {"onebit-lamb bf16, scale groups", lamb1(WirePrecision::kBf16, 128, 0, 0)},
      {"onebit-lamb fp16, tracked scales, refreshes", lamb1(WirePrecision::kFp16, 128, 1, 2)},
      {"onebit-adam bf16", [](const FlatLayout& l, Communicator& c) -> std::unique_ptr<Optimizer> {
         OnebitAdamOptions o;
         o.lr = 1e-3f, o.freeze_step = 3, o.warmup_exchange = WirePrecision::kBf16;
         return std::make_unique<OnebitAdam>(l, c, o);
       }},
  };
  // Step 2 is in the warmup (moving the freeze one step later: steps 1, 3 and 4 warm up), 5 in
  // compression, 7 in compression too or, with refreshes every 2 steps, a refresh.
  const FaultPlan plan{{1, 2}, {0, 5}, {2, 7}};
  std::set<std::string> stages_hit;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const Trace nan_gradient = run(c, P, steps, plan, false), injected = run(c, P, steps, plan, true);
    EXPECT_EQ(injected.stages, nan_gradient.stages);
    EXPECT_EQ(injected.applied, nan_gradient.applied);
    for (int s = 1; s <= steps; ++s) {
      const bool planned = s == 2 || s == 5 || s == 7;
      EXPECT_EQ(injected.applied[static_cast<size_t>(s - 1)], !planned) << "step " << s;
      if (planned) stages_hit.insert(injected.stages[static_cast<size_t>(s - 1)]);
    }
    for (int r = 0; r < P; ++r) {
      EXPECT_EQ(injected.skipped[static_cast<size_t>(r)], 3);
      // Bit for bit: the skip changed nothing that a NaN gradient's skip would not.
      EXPECT_EQ(injected.weights[static_cast<size_t>(r)], nan_gradient.weights[static_cast<size_t>(r)]) << "rank " << r;
      EXPECT_EQ(injected.weights[static_cast<size_t>(r)], injected.weights[0]);
    }
  }
  EXPECT_EQ(stages_hit, (std::set<std::string>{"fp32", "warmup", "compression", "refresh"}));
}

}  // namespace
}  // namespace onebit
