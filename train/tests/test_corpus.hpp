// A small synthetic corpus for the train tests: 30 files of sentences over a fixed word list, so the
// tests need no installed corpus and learn a tokenizer in well under a second.
#pragma once
#include <filesystem>
#include <fstream>
#include <string>

#include "train/random.hpp"

namespace onebit::train::test {

inline std::string sentence(CounterRng& rng) {
  static const char* kWords[] = {"the", "model", "learns", "a", "small", "language", "from", "text", "and", "every",
                                 "worker", "sends", "one", "bit", "per", "value", "with", "error", "feedback", "so",
                                 "training", "stays", "fast", "on", "slow", "networks", "while", "loss", "falls",
                                 "python", "function", "returns", "list", "of", "strings", "module", "imports",
                                 "class", "method", "object", "attribute", "raises", "exception", "when", "file",
                                 "is", "missing", "data", "batch", "step", "layer", "norm", "momentum", "compressed"};
  constexpr size_t kCount = sizeof kWords / sizeof kWords[0];
  std::string s;
  const int n = 6 + static_cast<int>(rng.below(10));
  for (int i = 0; i < n; ++i) {
    if (i) s += ' ';
    s += kWords[rng.below(kCount)];
  }
  return s + ".";
}

// Writes the corpus under `dir` (replacing it) and returns dir.
inline std::string write_corpus(const std::string& dir, int files = 30, int lines = 60) {
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  for (int f = 0; f < files; ++f) {
    CounterRng rng(1000 + static_cast<uint64_t>(f));
    std::ofstream out(std::filesystem::path(dir) / ("doc" + std::to_string(f) + ".txt"));
    for (int l = 0; l < lines; ++l) out << sentence(rng) << (l % 7 == 6 ? "\n\n" : "\n");
  }
  return dir;
}

inline std::string tmp_dir(const std::string& name) {
  const std::string d = std::string(ONEBIT_TEST_TMP) + "/" + name;
  std::filesystem::remove_all(d);
  std::filesystem::create_directories(d);
  return d;
}

}  // namespace onebit::train::test
