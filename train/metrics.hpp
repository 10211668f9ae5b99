// What a run reports while it trains: metrics.jsonl (one JSON object per step, flushed at once so a
// killed run keeps its history) and, on a terminal, a one-line progress bar.
#pragma once
#include <chrono>
#include <cstdint>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

namespace onebit::train {

class MetricsLog {
 public:
  // Opens `path` for appending after dropping every record with a step above `keep_through`
  // (a resumed run rewrites what came after its checkpoint). keep_through 0 starts afresh.
  MetricsLog(const std::string& path, int64_t keep_through);
  void write(const nlohmann::json& record);

 private:
  std::ofstream out_;
};

class Progress {
 public:
  // Draws on stderr, only when `enabled` and stderr is a terminal (stdout keeps the results).
  Progress(bool enabled, int64_t total_steps, int64_t first_step);
  bool active() const { return active_; }
  void update(int64_t step, double loss, double heldout, double lr, const std::string& stage, double samples_per_s);
  void finish();

 private:
  bool active_;
  int64_t total_, first_;
  std::chrono::steady_clock::time_point start_, last_draw_{};
};

std::string human_seconds(double s);

}  // namespace onebit::train
