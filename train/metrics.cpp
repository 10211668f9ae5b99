// metrics.jsonl and the progress bar (see metrics.hpp).
#include "train/metrics.hpp"

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <sstream>
#include <vector>

#include "onebit/error.hpp"

namespace onebit::train {

MetricsLog::MetricsLog(const std::string& path, int64_t keep_through) {
  std::vector<std::string> kept;
  if (keep_through > 0 && std::filesystem::exists(path)) {
    std::ifstream in(path);
    for (std::string line; std::getline(in, line);) {
      if (line.empty()) continue;
      auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (j.is_object() && j.value("step", int64_t{0}) <= keep_through) kept.push_back(line);
    }
  }
  out_.open(path, std::ios::trunc);
  ONEBIT_CHECK(out_.good(), "onebit train: cannot write " << path);
  for (const auto& l : kept) out_ << l << "\n";
  out_.flush();
}

void MetricsLog::write(const nlohmann::json& record) {
  out_ << record.dump() << "\n";
  out_.flush();
}

Progress::Progress(bool enabled, int64_t total_steps, int64_t first_step)
    : active_(enabled && ::isatty(STDERR_FILENO)), total_(total_steps), first_(first_step),
      start_(std::chrono::steady_clock::now()) {}

void Progress::update(int64_t step, double loss, double heldout, double lr, const std::string& stage,
                      double samples_per_s) {
  if (!active_) return;
  const auto now = std::chrono::steady_clock::now();
  if (step != total_ && now - last_draw_ < std::chrono::milliseconds(100)) return;
  last_draw_ = now;
  constexpr int kWidth = 24;
  const double frac = static_cast<double>(step) / static_cast<double>(total_);
  const int filled = static_cast<int>(frac * kWidth);
  std::string bar(static_cast<size_t>(filled), '#');
  bar.resize(kWidth, '.');
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  const double done = static_cast<double>(step - first_);
  const double eta = done > 0 ? elapsed / done * static_cast<double>(total_ - step) : 0;
  char line[256];
  std::snprintf(line, sizeof line, "\r%6lld/%lld [%s] loss %.3f%s lr %.2e %-11s %6.0f samples/s ETA %s  ",
                static_cast<long long>(step), static_cast<long long>(total_), bar.c_str(), loss,
                std::isnan(heldout) ? "" : (" held-out " + std::to_string(heldout).substr(0, 5)).c_str(), lr,
                stage.c_str(), samples_per_s, human_seconds(eta).c_str());
  std::cerr << line << std::flush;
}

void Progress::finish() {
  if (active_) std::cerr << "\n" << std::flush;
}

std::string human_seconds(double s) {
  char buf[32];
  if (s < 60) std::snprintf(buf, sizeof buf, "%.0fs", s);
  else if (s < 3600) std::snprintf(buf, sizeof buf, "%dm%02ds", static_cast<int>(s) / 60, static_cast<int>(s) % 60);
  else std::snprintf(buf, sizeof buf, "%dh%02dm", static_cast<int>(s) / 3600, static_cast<int>(s) / 60 % 60);
  return buf;
}

}  // namespace onebit::train
