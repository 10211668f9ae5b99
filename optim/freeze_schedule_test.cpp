// freeze_step = auto: the same decision on every rank, within its bounds, the same trajectory as that
// step given by hand, an exact resume across the decision, and bad bounds named.
#include "onebit/freeze_schedule.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <string>

#include "onebit/error.hpp"
#include "onebit/local_comm.hpp"
#include "onebit/optimizers.hpp"

namespace onebit {
namespace {

using Vec = std::vector<float>;
const FlatLayout kLayout({700, 33, 2048, 5, 1200});

// Rank p's gradient at step t: a signal that shrinks fast early and then levels off (as in training),
// plus rank noise, with a different magnitude per layer.
Vec gradient(int t, int p) {
  std::mt19937_64 shared(77 + t), own(1000003 * t + p);
  std::normal_distribution<float> d(0.0f, 1.0f);
  const float level = 0.2f + 1.0f / (1.0f + 0.3f * static_cast<float>(t));
  Vec g;
  for (size_t l = 0; l < kLayout.num_layers(); ++l)
    for (size_t i = 0; i < kLayout[l].size; ++i)
      g.push_back(level * std::pow(4.0f, static_cast<float>(l % 3)) * 1e-2f * (d(shared) + 0.5f * d(own)));
  return g;
}

Vec initial_weights() {
  std::mt19937_64 rng(5);
  std::normal_distribution<float> d(0.0f, 0.05f);
  Vec w(kLayout.total());
  for (auto& x : w) x = d(rng);
  return w;
}

AutoFreezeOptions bounds(int64_t min_steps, int64_t max_steps, double tolerance = 0.05) {
  AutoFreezeOptions a;
  a.min_steps = min_steps, a.max_steps = max_steps, a.window = 4, a.tolerance = tolerance;
  return a;
}

std::unique_ptr<Optimizer> make(bool adam, Communicator& comm, int64_t freeze_step, const AutoFreezeOptions& a) {
  if (adam) {
    OnebitAdamOptions o;
    o.lr = 1e-3f, o.freeze_step = freeze_step, o.auto_freeze = a;
    return std::make_unique<OnebitAdam>(kLayout, comm, o);
  }
  OnebitLambOptions o;
  o.lr = 1e-2f, o.weight_decay = 0.01f, o.freeze_step = freeze_step, o.auto_freeze = a;
  // What freeze_step = auto turns on, also with a given step, so the two compare bit for bit.
  o.refresh_interval = kAutoRefreshInterval, o.track_scales = 1, o.scale_group = kAutoScaleGroup;
  return std::make_unique<OnebitLamb>(kLayout, comm, o);
}

// Steps `opt` through gradient steps [from, to); returns the step after which it left the warmup.
int64_t run(Optimizer& opt, Vec& w, int from, int to) {
  int64_t left = 0;
  for (int t = from; t < to; ++t) {
    Vec g = gradient(t, opt.comm().rank());
    const bool warm = opt.in_warmup();
    EXPECT_TRUE(opt.step(w, g));
    if (warm && !opt.in_warmup()) left = opt.steps();
  }
  return left;
}

TEST(AutoFreeze, EveryRankDecidesTheSameStepWithinItsBoundsAndFollowsThatStepGivenByHand) {
  for (bool adam : {false, true}) {
    for (int P : {1, 3}) {
      run_local(P, [&](Communicator& comm) {
        auto a = make(adam, comm, kAutoFreeze, bounds(6, 60));
        EXPECT_EQ(a->freeze_step(), kAutoFreeze);
        Vec wa = initial_weights();
        const int64_t left = run(*a, wa, 0, 70);
        const int64_t decided = a->freeze_step();
        EXPECT_EQ(left, decided);
        // The shrinking signal keeps v moving at first: the data decides, not a bound.
        EXPECT_GT(decided, 6);
        EXPECT_LT(decided, 60);
        EXPECT_EQ(decided % 4, 0) << "decisions fall on window ends";
        std::vector<int64_t> all(static_cast<size_t>(P));
        comm.allgather_values<int64_t>(std::span<const int64_t>(&decided, 1), all);
        for (int64_t d : all) EXPECT_EQ(d, decided);
        // The same run with that step given by hand: the same bits, every step.
        auto b = make(adam, comm, decided, {});
        Vec wb = initial_weights();
        run(*b, wb, 0, 70);
        EXPECT_EQ(0, std::memcmp(wa.data(), wb.data(), wa.size() * 4)) << (adam ? "adam" : "lamb") << " P=" << P;
      });
    }
  }
}

TEST(AutoFreeze, TheCeilingFreezesWhateverVDoesAndTheFloorWaits) {
  run_local(2, [&](Communicator& comm) {
    auto never_stable = make(false, comm, kAutoFreeze, bounds(1, 9, 1e-9));
    Vec w = initial_weights();
    EXPECT_EQ(run(*never_stable, w, 0, 12), 9);
    auto late_floor = make(false, comm, kAutoFreeze, bounds(40, 50, 0.9));
    w = initial_weights();
    EXPECT_EQ(run(*late_floor, w, 0, 60), 40);
  });
}

TEST(AutoFreeze, ResumesBitForBitAcrossTheDecision) {
  for (bool adam : {false, true}) {
    run_local(3, [&](Communicator& comm) {
      auto straight = make(adam, comm, kAutoFreeze, bounds(6, 60));
      Vec ws = initial_weights();
      const int steps = 100;  // past the first refresh (16 steps after the freeze, which is at most 60)
      run(*straight, ws, 0, steps);
      const int64_t decided = straight->freeze_step();
      ASSERT_GT(decided, 6);
      for (int64_t stop : {decided - 5, decided - 1, decided, decided + 2, decided + kAutoRefreshInterval + 3}) {
        auto first = make(adam, comm, kAutoFreeze, bounds(6, 60));
        Vec wr = initial_weights();
        run(*first, wr, 0, static_cast<int>(stop));
        const OptimizerState saved = first->state();
        auto resumed = make(adam, comm, kAutoFreeze, bounds(6, 60));
        resumed->load_state(saved);
        run(*resumed, wr, static_cast<int>(stop), steps);
        EXPECT_EQ(resumed->freeze_step(), decided) << "stopped at " << stop;
        EXPECT_EQ(0, std::memcmp(ws.data(), wr.data(), ws.size() * 4)) << "stopped at " << stop;
        EXPECT_EQ(resumed->state().tensors, straight->state().tensors) << "stopped at " << stop;
      }
    });
  }
}

// A NaN on one rank in a refresh step or a tracked-scales step: every rank skips, nothing changes.
TEST(AutoFreeze, ANonFiniteGradientInARefreshOrATrackedStepSkipsEverywhere) {
  run_local(3, [&](Communicator& comm) {
    OnebitLambOptions o;
    o.lr = 1e-2f, o.freeze_step = 4, o.refresh_interval = 2, o.track_scales = 1;
    OnebitLamb opt(kLayout, comm, o);
    Vec w = initial_weights();
    run(opt, w, 0, 5);  // the warmup and the first compression step (it sets k)
    for (int t = 5; t < 11; ++t) {
      const bool refresh = std::string(opt.next_stage()) == "refresh";
      const OptimizerState before = opt.state();
      const Vec w_before = w;
      Vec bad = gradient(t, comm.rank());
      if (comm.rank() == 1) bad[3] = std::nanf("");
      EXPECT_FALSE(opt.step(w, bad)) << "step " << t << (refresh ? " (refresh)" : "");
      EXPECT_EQ(opt.state().tensors, before.tensors) << "step " << t;
      EXPECT_EQ(0, std::memcmp(w.data(), w_before.data(), w.size() * 4));
      Vec g = gradient(t, comm.rank());
      EXPECT_TRUE(opt.step(w, g));
    }
    EXPECT_EQ(opt.refreshes(), 2);  // 2 and 6 steps after the freeze
  });
}

TEST(AutoFreeze, BadBoundsAndMixedStatesAreNamed) {
  run_local(1, [&](Communicator& comm) {
    auto expect_error = [&](int64_t freeze_step, const AutoFreezeOptions& a, const std::string& word) {
      for (bool adam : {false, true}) {
        try {
          make(adam, comm, freeze_step, a);
          ADD_FAILURE() << "no error for " << word;
        } catch (const Error& e) {
          EXPECT_NE(std::string(e.what()).find(word), std::string::npos) << e.what();
        }
      }
    };
    expect_error(-3, {}, "freeze_step must be >= 1 (the last warmup step) or auto");
    expect_error(kAutoFreeze, bounds(20, 10), "min_steps <= max_steps, got min_steps 20, max_steps 10");
    expect_error(kAutoFreeze, bounds(0, 10), "min_steps");
    AutoFreezeOptions a = bounds(1, 10);
    a.window = 0;
    expect_error(kAutoFreeze, a, "window");
    expect_error(kAutoFreeze, bounds(1, 10, 0.0), "tolerance");
    expect_error(kAutoFreeze, bounds(1, 10, 1.0), "tolerance");
    // Crossed bounds are fine with a given step: they are not used.
    EXPECT_NO_THROW(make(false, comm, 5, bounds(20, 10)));
    auto automatic = make(false, comm, kAutoFreeze, {});
    auto given = make(false, comm, 5, {});
    try {
      given->load_state(automatic->state());
      ADD_FAILURE() << "a given freeze step loaded an automatic state";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("freeze_step auto"), std::string::npos) << e.what();
    }
  });
}

}  // namespace
}  // namespace onebit
