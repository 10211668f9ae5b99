// The optimizer registry: every entry builds its optimizer, its written-back defaults read back to
// the same settings, values land in the right fields, and bad input is named.
#include "onebit/optimizer_registry.hpp"

#include <gtest/gtest.h>

#include <string>

#include "../tests/error_of.hpp"
#include "onebit/error.hpp"
#include "onebit/local_comm.hpp"
#include "options.hpp"

namespace onebit {
namespace {

using test::error_of;

Settings settings(const AnyOptions& o) {
  return std::visit([](const auto& x) { return settings_of(x); }, o);
}

TEST(Registry, EveryEntryBuildsTheOptimizerItNames) {
  ASSERT_EQ(optimizer_names(), "lamb, onebit-lamb, onebit-adam");
  const FlatLayout layout({100, 37});
  for (const OptimizerKind& k : optimizer_kinds()) {
    EXPECT_EQ(&optimizer_kind(k.name), &k);
    EXPECT_EQ(&optimizer_kind(k.defaults), &k) << k.name << ": the table is out of the variant's order";
    run_local(1, [&](Communicator& comm) {
      const auto opt = make_optimizer(layout, comm, k.defaults);
      EXPECT_EQ(opt->name(), k.name);
      EXPECT_EQ(opt->next_stage() != std::string("fp32"), k.compresses) << k.name;
    });
  }
}

TEST(Registry, WrittenBackDefaultsReadBackToTheSameSettings) {
  for (const OptimizerKind& k : optimizer_kinds()) {
    OptionValues values;
    for (const OptionInfo& i : k.options()) {
      EXPECT_FALSE(i.doc.empty()) << k.name << " " << i.key;
      char* end = nullptr;
      const double d = std::strtod(i.default_.c_str(), &end);
      if (*end == '\0' && end != i.default_.c_str())
        values[i.key] = d;
      else
        values[i.key] = i.default_;
    }
    const AnyOptions parsed = k.parse(values);
    EXPECT_EQ(settings(parsed), settings(k.defaults)) << k.name;
    EXPECT_EQ(lr_of(parsed), lr_of(k.defaults));
  }
}

TEST(Registry, ValuesLandInTheirFields) {
  const AnyOptions a = optimizer_kind("onebit-lamb")
                           .parse({{"lr", 0.25}, {"beta2", 0.99}, {"freeze_step", 7.0}, {"auto_window", 3.0},
                                   {"scale_group", 128.0}, {"refresh_interval", "auto"}, {"warmup_exchange", "bf16"},
                                   {"threads", 2.0}, {"track_scales", 0.0}});
  const auto& o = std::get<OnebitLambOptions>(a);
  EXPECT_EQ(o.lr, 0.25f);
  EXPECT_EQ(o.beta2, 0.99f);
  EXPECT_EQ(o.freeze_step, 7);
  EXPECT_EQ(o.auto_freeze.window, 3);
  EXPECT_EQ(o.scale_group, 128);
  EXPECT_EQ(o.refresh_interval, kWithAutoFreeze);
  EXPECT_EQ(o.warmup_exchange, WirePrecision::kBf16);
  EXPECT_EQ(o.threads, 2);
  EXPECT_EQ(o.track_scales, 0);
  EXPECT_EQ(o.beta1, OnebitLambOptions{}.beta1);  // untouched: the default
  EXPECT_EQ(std::get<OnebitAdamOptions>(optimizer_kind("onebit-adam").parse({{"freeze_step", "auto"}})).freeze_step,
            kAutoFreeze);
}

TEST(Registry, BadInputIsNamed) {
  const OptimizerKind& lamb = optimizer_kind("lamb");
  EXPECT_NE(error_of([&] { (void)optimizer_kind("sgd"); }).find("no optimizer named 'sgd' (there are lamb, onebit-lamb"),
            std::string::npos);
  EXPECT_NE(error_of([&] { lamb.parse({{"freeze_step", 3.0}}); }).find("lamb: unknown option 'freeze_step' (its options: lr,"),
            std::string::npos);
  EXPECT_NE(error_of([&] { lamb.parse({{"lr", "fast"}}); }).find("lamb: lr must be a number, got 'fast'"), std::string::npos);
  EXPECT_NE(error_of([&] { lamb.parse({{"threads", 1.5}}); }).find("lamb: threads must be a whole number, got 1.5"),
            std::string::npos);
  EXPECT_NE(error_of([&] { lamb.parse({{"threads", 3e9}}); }).find("lamb: threads must be a whole number, got 3e+09"),
            std::string::npos);  // past int
  EXPECT_NE(error_of([&] { lamb.parse({{"warmup_exchange", 16.0}}); }).find("must be fp32, bf16 or fp16"),
            std::string::npos);
  EXPECT_NE(error_of([&] { lamb.parse({{"beta1", 1.0}}); }).find("beta1 must be in [0, 1)"), std::string::npos);
  const OptimizerKind& lamb1 = optimizer_kind("onebit-lamb");
  EXPECT_NE(error_of([&] { lamb1.parse({{"freeze_step", "soon"}}); }).find("freeze_step must be a whole number or auto"),
            std::string::npos);
  EXPECT_NE(error_of([&] { lamb1.parse({{"scale_group", 100.0}}); }).find("multiple of 64"), std::string::npos);
  EXPECT_NE(error_of([&] { optimizer_kind("onebit-adam").parse({{"scale_group", "auto"}}); })
                .find("scale_group must be a number"),
            std::string::npos);
}

TEST(Registry, MomentumMasksOnlyWhereTheEntrySaysSo) {
  const FlatLayout layout({64});
  const std::vector<float> mask(64, 1.0f);
  for (const OptimizerKind& k : optimizer_kinds())
    run_local(1, [&](Communicator& comm) {
      const auto opt = make_optimizer(layout, comm, k.defaults);
      const std::string e = error_of([&] { opt->set_momentum_mask(0, mask); });
      EXPECT_EQ(e.empty(), k.momentum_mask) << k.name << ": " << e;
    });
}

}  // namespace
}  // namespace onebit
