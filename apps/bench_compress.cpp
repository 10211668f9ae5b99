// `onebit bench compress`: one worker compression plus its decode, against memcpy of the same
// buffer in the same run (memcpy is the floor any pass over the data has to pay).
#include <CLI/CLI.hpp>
#include <cstring>
#include <iostream>

#include "bench_common.hpp"
#include "onebit/error.hpp"
#include "onebit/kernels.hpp"
#include "onebit/thread_pool.hpp"

namespace onebit::bench {
namespace {

kernels::Isa parse_isa(const std::string& name) {
  if (name == "generic") return kernels::Isa::kGeneric;
  if (name == "avx2") return kernels::Isa::kAvx2;
  if (name == "avx512") return kernels::Isa::kAvx512;
  throw Error("bench compress: unknown --isa '" + name + "'");
}

// Bytes per element, read plus written: compress reads x and prev and writes next and the sign
// bit; decode writes x back.
constexpr double kCompressDecodeBytes = 4 + 4 + 4 + 0.125 + 4;
constexpr double kMemcpyBytes = 4 + 4;

}  // namespace

CLI::App* add_compress_command(CLI::App& bench, CompressOptions& o) {
  CLI::App* c = bench.add_subcommand("compress", "time compress+decode of fp32 elements against memcpy");
  c->add_option("--elements", o.elements, "fp32 elements")->check(positive_integer, "POSITIVE")->capture_default_str();
  c->add_option("--threads", o.threads, "kernel threads")->check(CLI::Range(1, 1024))->capture_default_str();
  c->add_option("--repeats", o.repeats, "timed runs (median reported)")->check(CLI::Range(1, 100000))->capture_default_str();
  c->add_option("--isa", o.isa, "force an instruction set (default: the best supported)")
      ->check(CLI::IsMember({"generic", "avx2", "avx512"}));
  c->add_flag("--json", o.json, "print JSON instead of a table");
  c->add_option("--out", o.out, "also write the JSON to this file");
  c->footer(example("onebit bench compress --elements 16777216 --threads 2 --json"));
  return c;
}

int run_compress(const CompressOptions& o) {
  if (!o.isa.empty()) kernels::set_active_isa(parse_isa(o.isa));
  const size_t n = o.elements;
  ThreadPool pool(o.threads);
  const kernels::Partition part(n);

  AlignedVector<float> x(n), state[2] = {AlignedVector<float>(n, 0.0f), AlignedVector<float>(n, 0.0f)};
  std::vector<uint8_t> bits((n + 7) / 8 + 64, 0);
  AlignedVector<float> src(n), dst(n, 0.0f);
  fill_random(x, 1);
  fill_random(src, 2);

  // The error state carries over from repeat to repeat, as it does from step to step in training,
  // and decode writes back into x so the next repeat compresses the previous output.
  int cur = 0;
  float prev_scale = 0.0f;
  auto compress_decode = [&] {
    const double sum_sq = kernels::compress(part, pool, x.data(), state[cur].data(), {&prev_scale, 1},
                                            state[1 - cur].data(), bits.data());
    const float scale = kernels::scale_from_sum(sum_sq, n);
    kernels::decode(part, pool, bits.data(), &scale, x.data());
    cur = 1 - cur;
    prev_scale = scale;
  };
  auto copy = [&] { std::memcpy(dst.data(), src.data(), n * sizeof(float)); };
  const std::vector<double> t = time_medians(o.repeats, {compress_decode, copy});

  const double nd = static_cast<double>(n);
  const double bytes_cd = kCompressDecodeBytes * nd, bytes_copy = kMemcpyBytes * nd;
  const std::string isa = kernels::isa_name(kernels::active_isa());
  nlohmann::json j = {
      {"bench", "compress"},
      {"elements", n},
      {"threads", o.threads},
      {"repeats", o.repeats},
      {"isa", isa},
      {"seconds", {{"compress_decode", t[0]}, {"memcpy", t[1]}}},
      {"bytes", {{"compress_decode", bytes_cd}, {"memcpy", bytes_copy}}},
      {"gb_per_s", {{"compress_decode", bytes_cd / t[0] / 1e9}, {"memcpy", bytes_copy / t[1] / 1e9}}},
      {"time_ratio", t[0] / t[1]},
      // What time_ratio would be if compress+decode moved its bytes at memcpy's bandwidth.
      {"floor_time_ratio", bytes_cd / bytes_copy},
      {"machine", machine_json()},
  };
  emit(j, o.json, o.out, [&](std::ostream& os) {
    os << "compress+decode of " << n << " fp32 elements, " << o.threads << " thread(s), isa " << isa
       << ", median of " << o.repeats << "\n";
    print_table(os, {{"", "seconds", "bytes", "GB/s"},
                     {"compress+decode", fixed(t[0], 6), human_bytes(bytes_cd), fixed(bytes_cd / t[0] / 1e9, 2)},
                     {"memcpy", fixed(t[1], 6), human_bytes(bytes_copy), fixed(bytes_copy / t[1] / 1e9, 2)}});
    os << "time_ratio (compress+decode / memcpy): " << fixed(t[0] / t[1], 3)
       << "   (at memcpy bandwidth it would be " << fixed(bytes_cd / bytes_copy, 3) << ")\n";
    os << "machine: " << j["machine"]["cpu"].get<std::string>() << ", " << j["machine"]["cores"].get<int>()
       << " cores\n";
  });
  return 0;
}

}  // namespace onebit::bench
