// The command line of `onebit train` (train_cmd.cpp) against the arguments the launcher gives the
// workers (train/'s to_args): every setting reaches a worker as it was, in any order, and a bad
// --freeze-step is refused.
#include <gtest/gtest.h>

#include <CLI/CLI.hpp>
#include <string>
#include <vector>

#include "train/options.hpp"
#include "train_cmd.hpp"

namespace onebit::train {
namespace {

// Parses "train" + to_args(in), reversed (options before the subcommand's name: any order parses).
TrainOptions parsed_back(const TrainOptions& in) {
  CLI::App app;
  TrainOptions parsed;
  add_train_command(app, parsed);
  std::vector<std::string> args{"train"};
  for (const auto& a : to_args(in)) args.push_back(a);
  app.parse(std::vector<std::string>(args.rbegin(), args.rend()));
  return parsed;
}

TEST(TrainCommand, ParsesBackEverySettingTheLauncherPasses) {
  TrainOptions o;
  o.steps = 1000;
  TrainOptions in = resolve_options(o);
  in.data = {"a dir", "b.txt"};
  in.lr = 0.1 + 0.2;  // not exactly representable in short decimal
  in.seed = 18446744073709551615ull;
  in.resume = "runs/x";
  in.progress = false;
  in.micro_batch = 3;
  in.log_layers = true;
  in.warmup_exchange = "fp16";
  in.precision = "bf16";
  const TrainOptions parsed = parsed_back(in);
  EXPECT_EQ(options_json(parsed), options_json(in));
  EXPECT_EQ(parsed.progress, false);
  EXPECT_EQ(parsed.inject_nonfinite, "");
  in.inject_nonfinite = "1:2,0:5";  // hidden, outside options_json: checked by itself
  EXPECT_EQ(parsed_back(in).inject_nonfinite, "1:2,0:5");
  in.freeze_step = 7;  // a given step round-trips too (0 went through as "auto")
  EXPECT_EQ(options_json(parsed_back(in)), options_json(in));
}

TEST(TrainCommand, RefusesAFreezeStepThatIsNotAPositiveNumber) {
  for (const char* bad : {"0", "-3", "often", "12x"}) {
    CLI::App app;
    TrainOptions parsed;
    add_train_command(app, parsed);
    EXPECT_THROW(app.parse(std::vector<std::string>{bad, "--freeze-step", "train"}), CLI::ValidationError) << bad;
  }
}

}  // namespace
}  // namespace onebit::train
