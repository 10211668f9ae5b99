// `onebit optimizers`: prints the registry.
#include "optimizers_cmd.hpp"

#include <iomanip>
#include <iostream>

#include "bench_common.hpp"
#include "onebit/optimizer_registry.hpp"

namespace onebit::bench {

CLI::App* add_optimizers_command(CLI::App& app, OptimizersOptions& o) {
  CLI::App* c = app.add_subcommand("optimizers", "list the optimizers, what each can do, and their options");
  c->add_flag("--json", o.json, "print JSON instead of tables");
  c->footer(example("onebit optimizers --json"));
  return c;
}

int run_optimizers(const OptimizersOptions& o) {
  nlohmann::json j = nlohmann::json::array();
  for (const OptimizerKind& k : optimizer_kinds()) {
    nlohmann::json options = nlohmann::json::array();
    for (const OptionInfo& i : k.options()) options.push_back({{"key", i.key}, {"default", i.default_}, {"doc", i.doc}});
    j.push_back({{"name", k.name},
                 {"summary", k.summary},
                 {"compresses", k.compresses},
                 {"trust_ratio", k.trust_ratio},
                 {"momentum_mask", k.momentum_mask},
                 {"options", options}});
  }
  emit(j, o.json, "", [&](std::ostream& os) {
    for (const auto& k : j) {
      os << k["name"].get<std::string>() << ": " << k["summary"].get<std::string>() << "\n";
      for (const auto& i : k["options"])  // key, default, doc: left-aligned columns
        os << "  " << std::left << std::setw(18) << i["key"].get<std::string>() << std::setw(8)
           << i["default"].get<std::string>() << " " << i["doc"].get<std::string>() << "\n";
      os << "\n";
    }
  });
  return 0;
}

}  // namespace onebit::bench
