// The GPU benchmark (issue 6) with BERT-Large shapes: compressed allreduce, LAMB step, 1-bit LAMB and
// 1-bit Adam compression steps and their kernels, each against a device-to-device copy of the same
// bytes timed in the same run; plus a bitwise check against the CPU at full size. Writes JSON.
#include <cuda_runtime.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "onebit/compressed_allreduce.hpp"
#include "onebit/cuda_optimizers.hpp"
#include "onebit/error.hpp"
#include "onebit/local_comm.hpp"
#include "onebit/nccl_comm.hpp"
#include "onebit/optimizers.hpp"

namespace onebit::cuda {
namespace {

using nlohmann::json;

void check(cudaError_t rc, const char* what) {
  if (rc != cudaSuccess) throw Error(std::string("gpu bench: ") + what + ": " + cudaGetErrorString(rc));
}

struct Options {
  size_t params = 335141888;  // BERT-Large: FlatLayout::bert_like gives 391 tensors
  int iterations = 20;
  bool cpu_check = true;
  std::string out;
};

// Uniform in [-scale, scale) from splitmix64 of the index: fast, and the same on every run.
std::vector<float> host_random(size_t n, uint64_t seed, float scale) {
  std::vector<float> v(n);
  const unsigned T = std::max(1u, std::min(16u, std::thread::hardware_concurrency()));
  std::vector<std::thread> threads;
  for (unsigned t = 0; t < T; ++t)
    threads.emplace_back([&, t] {
      for (size_t i = n * t / T; i < n * (t + 1) / T; ++i) {
        uint64_t z = (i + 1) * 0x9E3779B97F4A7C15ull + seed;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        v[i] = scale * (static_cast<float>(z >> 40) * (2.0f / 16777216.0f) - 1.0f);
      }
    });
  for (auto& th : threads) th.join();
  return v;
}

bool bitwise_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

DeviceArray<float> device_copy(const std::vector<float>& h) { return DeviceArray<float>(std::span<const float>(h)); }

// Median and minimum of `iterations` timings (CUDA events on the stream) of enqueue(); finish()
// runs after each (the optimizers' wait for their outcome). Two untimed runs first.
json time_ms(Stream stream, int iterations, const std::function<void()>& enqueue,
             const std::function<void()>& finish = [] {}) {
  cudaEvent_t start, stop;
  check(cudaEventCreate(&start), "event");
  check(cudaEventCreate(&stop), "event");
  std::vector<double> ms;
  for (int it = -2; it < iterations; ++it) {
    check(cudaEventRecord(start, stream), "record");
    enqueue();
    check(cudaEventRecord(stop, stream), "record");
    finish();
    check(cudaEventSynchronize(stop), "sync");
    float t = 0;
    check(cudaEventElapsedTime(&t, start, stop), "elapsed");
    if (it >= 0) ms.push_back(t);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::sort(ms.begin(), ms.end());
  return {{"ms_median", ms[ms.size() / 2]}, {"ms_min", ms.front()}, {"iterations", iterations}};
}

// Bytes each pass must move per parameter at world size 1 (fp32 = 4, a sign bit = 1/8). In the
// compression stage the momentum is the last exchange's sign bits, read at 1/8 byte and never written.
constexpr double kCompress = 4 + 4 + 4 + 0.125;                // read x, read c, write c, write bits
constexpr double kCompressMomentum = 0.125 + 4 + 4 + 4 + 0.125;  // read m's bits, g, c; write c, bits
constexpr double kServer = 0.125 + 4 + 4 + 0.125;              // read bits, read f, write f, write bits
constexpr double kDecode = 0.125 + 4;
constexpr double kLambNorms = 16, kLambUpdate = 16 + 12;       // read g m v w; write m v w
constexpr double kOnebitNorms = 0.125 * 2 + 4 + 8 + 4;         // bits of m and m_prev, v, vf (r/w), w
constexpr double kFrozen = 0.125 + 4 + 8;                      // m's bits, v, w (r/w)
constexpr double kTrack = 4 + 8;                               // g's layer norms; the errors rescaled (r/w)
// The bars: each step at 0.85 of the copy bandwidth measured in the same run (on an H100
// with these shapes about 3.2, 5.5 and 7.5 ms; any GPU is held to its own copy bandwidth).
constexpr double kBarFraction = 0.85;

// Adds bytes moved, achieved bandwidth and the fraction of copy bandwidth to a timing.
json with_bytes(json t, double bytes_per_param, size_t n, double copy_gbps, double bar_ms = 0) {
  const double gbps = bytes_per_param * static_cast<double>(n) / (t["ms_median"].get<double>() * 1e6);
  t["bytes_per_param"] = bytes_per_param;
  t["GBps"] = gbps;
  t["fraction_of_copy"] = gbps / copy_gbps;
  if (bar_ms > 0) {
    t["h100_bar_ms"] = bar_ms;
    t["bar_fraction_of_copy"] = kBarFraction;
    t["meets_bar"] = gbps / copy_gbps >= kBarFraction;
  }
  return t;
}

// "NVIDIA H100 80GB HBM3" -> "nvidia-h100-80gb-hbm3"
std::string file_name(const std::string& s) {
  std::string r;
  for (char c : s) {
    const bool keep = std::isalnum(static_cast<unsigned char>(c));
    if (keep) r.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(c))));
    else if (!r.empty() && r.back() != '-') r.push_back('-');
  }
  while (!r.empty() && r.back() == '-') r.pop_back();
  return r.empty() ? "gpu" : r;
}

// What every timing shares: where it runs, how often, and the copy bandwidth over n parameters it
// is measured against.
struct Timer {
  Stream stream;
  int iterations;
  size_t n;
  double copy_gbps;

  // time_ms of enqueue (and finish), with_bytes of the result.
  json operator()(double bytes_per_param, const std::function<void()>& enqueue,
                  const std::function<void()>& finish = [] {}, double bar_ms = 0) const {
    return with_bytes(time_ms(stream, iterations, enqueue, finish), bytes_per_param, n, copy_gbps, bar_ms);
  }
};

// The device buffers the timings share: weights w, gradients g, x (a copy of g), y (scratch).
struct Buffers {
  DeviceArray<float> w, g, x, y;
};

// The floor: one fp32 buffer copied device to device (read + write = 8 bytes per parameter).
json time_copy(Stream stream, int iterations, Buffers& b) {
  const size_t N = b.w.size();
  json copy = time_ms(stream, iterations, [&] {
    check(cudaMemcpyAsync(b.y.data(), b.w.data(), N * 4, cudaMemcpyDeviceToDevice, stream), "copy");
  });
  copy["GBps"] = 8.0 * static_cast<double>(N) / (copy["ms_median"].get<double>() * 1e6);
  copy["bytes_per_param"] = 8;
  return copy;
}

// The kernels one by one, over the layout of the steps.
json time_kernels(const FlatLayout& layout, const Timer& timer, Buffers& b) {
  const size_t N = layout.total(), L = layout.num_layers();
  const Stream stream = timer.stream;
  const DevicePartition part(kernels::Partition(N, layout.boundaries(), N));
  DeviceArray<float> c(N), scale(1), v(N), vf(N);
  DeviceArray<uint8_t> bits((N + 63) / 64 * 8 + 8), bits2((N + 63) / 64 * 8 + 8);
  DeviceArray<double> a(L), d_b(L), d(L);
  DeviceArray<float> mx(L), coef(L), kk(L), m(N);
  for (auto* arr : {&c, &scale, &v, &vf, &m}) arr->zero(stream);
  fill(coef.data(), L, 1e-4f, stream);
  fill(kk.data(), L, 1.0f, stream);
  fill(scale.data(), 1, 1e-3f, stream);
  const kernels::MomentParams p{0.9f, 0.999f, 1e-8f, 0.01f};
  // The compression stage's momenta: this exchange's signs and the last one's.
  const kernels::Momentum now{.bits = bits.data(), .scales = scale.data(), .k = kk.data()};
  const kernels::Momentum last{.bits = bits2.data(), .scales = scale.data(), .k = kk.data()};
  float *g = b.g.data(), *y = b.y.data();
  json k;
  k["compress_momentum"] = timer(kCompressMomentum, [&] {
    compress_momentum(part, last, g, 0.9f, kk.data(), c.data(), {scale.data(), false}, c.data(), bits.data(),
                      {scale.data(), false, nullptr}, stream);
  });
  k["server_average"] = timer(kServer, [&] {
    server_average(part, bits.data(), (N + 63) / 64 * 8, {scale.data(), false}, 1, c.data(), {scale.data(), false},
                   bits2.data(), {scale.data(), false, nullptr}, stream);
  });
  k["decode"] = timer(kDecode, [&] { decode(part, bits.data(), scale.data(), y, stream); });
  k["lamb_norms"] = timer(kLambNorms, [&] {
    lamb_norms(part, g, m.data(), v.data(), y, p, a.data(), d_b.data(), stream);
  });
  k["lamb_update"] = timer(kLambUpdate, [&] {
    lamb_update(part, g, m.data(), v.data(), y, p, coef.data(), stream);
  });
  k["onebit_lamb_norms"] = timer(kOnebitNorms, [&] {
    onebit_lamb_norms(part, now, last, p, v.data(), vf.data(), y, {a.data(), d_b.data(), d.data(), mx.data()},
                      stream);
  });
  k["frozen_update"] = timer(kFrozen, [&] { frozen_update(part, now, v.data(), y, 1e-8f, 0.01f, coef.data(), stream); });
  return k;
}

// The compressed allreduce of x into y, against the bar.
json time_allreduce(Communicator& comm, const FlatLayout& layout, const Timer& timer, Buffers& b) {
  CudaCompressedAllreduce ar(comm, timer.stream, layout.total(), layout.boundaries());
  return timer(kCompress + kServer + kDecode, [&] { ar.compress(b.x.data()); ar.exchange(); ar.decode(b.y.data()); },
              [&] { ar.commit(true); }, 3.2);
}

// A LAMB step, against the bar.
json time_lamb_step(Communicator& comm, const FlatLayout& layout, const Timer& timer, Buffers& b) {
  CudaLamb lamb(layout, comm, timer.stream);
  return timer(kLambNorms + kLambUpdate, [&] { lamb.step_async(b.w.data(), b.g.data()); }, [&] { lamb.sync(); },
              5.5);
}

// A 1-bit LAMB compression step (a momentum mask on the position embedding), against the issue's
// bar; `defaults` adds what `onebit train` runs by default in the compression stage: tracked scales
// (a per-layer all-reduce and the errors rescaled) and a scale per group of 2048 values.
json time_onebit_lamb_step(Communicator& comm, const FlatLayout& layout, const Timer& timer, Buffers& b,
                           bool defaults) {
  OnebitLambOptions opt;
  opt.freeze_step = 1;
  if (defaults) {
    opt.track_scales = 1;
    opt.scale_group = kAutoScaleGroup;
  }
  CudaOnebitLamb lamb1(layout, comm, timer.stream, opt);
  // Sequence length 128: rows 128..511 of the position embedding never get a gradient (docs/algorithm.md §4).
  std::vector<float> mask(layout[1].size, 0.0f);
  std::fill(mask.begin(), mask.begin() + std::min<size_t>(mask.size(), 128 * layout[1].size / 512), 1.0f);
  lamb1.set_momentum_mask(1, mask);
  for (int i = 0; i < 3; ++i) lamb1.step_async(b.w.data(), b.g.data());  // warmup, then the momentum is in signs
  lamb1.sync();
  return timer(kCompressMomentum + kServer + kOnebitNorms + kFrozen + (defaults ? kTrack : 0),
              [&] { lamb1.step_async(b.w.data(), b.g.data()); }, [&] { lamb1.sync(); }, defaults ? 0 : 7.5);
}

// A 1-bit Adam compression step.
json time_onebit_adam_step(Communicator& comm, const FlatLayout& layout, const Timer& timer, Buffers& b) {
  OnebitAdamOptions opt;
  opt.freeze_step = 1;
  CudaOnebitAdam adam1(layout, comm, timer.stream, opt);
  adam1.step_async(b.w.data(), b.g.data());
  adam1.sync();
  adam1.step_async(b.w.data(), b.g.data());  // the momentum is in signs from here on
  adam1.sync();
  return timer(kCompressMomentum + kServer + kFrozen, [&] { adam1.step_async(b.w.data(), b.g.data()); },
              [&] { adam1.sync(); });
}

// Every timing, in this order (the steps change w): the copy floor, the kernels, then the steps.
json bench(Communicator& comm, Stream stream, const Options& o) {
  const FlatLayout layout = FlatLayout::bert_like(o.params);
  const size_t N = layout.total(), L = layout.num_layers();
  json out;
  out["params"] = N;
  out["layers"] = L;
  out["backend"] = comm.backend();
  out["world_size"] = comm.size();
  std::cerr << "gpu bench: " << N << " parameters in " << L << " tensors over " << comm.backend() << "\n";

  Buffers b{device_copy(host_random(N, 1, 0.05f)), device_copy(host_random(N, 2, 1e-3f)), DeviceArray<float>(N),
            DeviceArray<float>(N)};
  check(cudaMemcpy(b.x.data(), b.g.data(), N * 4, cudaMemcpyDeviceToDevice), "copy");
  out["copy"] = time_copy(stream, o.iterations, b);
  const Timer timer{stream, o.iterations, N, out["copy"]["GBps"].get<double>()};
  out["kernels"] = time_kernels(layout, timer, b);
  json r;
  r["compressed_allreduce"] = time_allreduce(comm, layout, timer, b);
  r["lamb_step"] = time_lamb_step(comm, layout, timer, b);
  r["onebit_lamb_compression_step"] = time_onebit_lamb_step(comm, layout, timer, b, false);
  r["onebit_lamb_compression_step_defaults"] = time_onebit_lamb_step(comm, layout, timer, b, true);
  r["onebit_adam_compression_step"] = time_onebit_adam_step(comm, layout, timer, b);
  out["results"] = r;
  return out;
}

// `steps` 1-bit LAMB steps on the CPU and the GPU from the same inputs: the weights bit for bit
// after every step.
bool onebit_lamb_equal(Communicator& comm, Stream stream, const FlatLayout& layout, const OnebitLambOptions& opt,
                       int steps) {
  const size_t N = layout.total();
  std::vector<std::vector<float>> cpu_w;
  run_local(1, [&](Communicator& local) {
    OnebitLamb cpu(layout, local, opt);
    auto w = host_random(N, 1, 0.05f);
    for (int s = 0; s < steps; ++s) {
      auto g = host_random(N, 20 + s, 1e-3f);
      cpu.step(w, g);
      cpu_w.push_back(w);
    }
  });
  bool same = true;
  CudaOnebitLamb gpu(layout, comm, stream, opt);
  DeviceArray<float> w = device_copy(host_random(N, 1, 0.05f));
  for (int s = 0; s < steps; ++s) {
    DeviceArray<float> g = device_copy(host_random(N, 20 + s, 1e-3f));
    gpu.step(std::span<float>(w.data(), N), std::span<float>(g.data(), N));
    same = same && bitwise_equal(w.download(), cpu_w[s]);
  }
  return same;
}

// The same full-size inputs through the CPU and the GPU, compared bit for bit: the compressed
// allreduce (two calls), three 1-bit LAMB steps (one warmup, two compression) and five with
// `onebit train`'s compression stage (warmup, refresh, compression, refresh, compression).
json cpu_check(Communicator& comm, Stream stream, const Options& o) {
  const FlatLayout layout = FlatLayout::bert_like(o.params);
  const size_t N = layout.total();
  const auto bounds = layout.boundaries();
  const int threads = static_cast<int>(std::max(1u, std::min(16u, std::thread::hardware_concurrency())));
  json out;
  bool same = true;
  std::vector<std::vector<float>> cpu_out;
  run_local(1, [&](Communicator& local) {
    ThreadPool pool(threads);
    CompressedAllreduce ar(local, pool, N, bounds);
    for (int c = 0; c < 2; ++c) {
      auto x = host_random(N, 10 + c, 1.0f);
      ar.run(x);
      cpu_out.push_back(std::move(x));
    }
  });
  {
    CudaCompressedAllreduce ar(comm, stream, N, bounds);
    for (int c = 0; c < 2; ++c) {
      DeviceArray<float> x = device_copy(host_random(N, 10 + c, 1.0f));
      ar.run(x.data());
      same = same && bitwise_equal(x.download(), cpu_out[c]);
    }
  }
  out["compressed_allreduce_bitwise_equal"] = same;

  OnebitLambOptions opt;
  opt.freeze_step = 1;
  opt.weight_decay = 0.01f;
  opt.threads = threads;
  const bool same_lamb = onebit_lamb_equal(comm, stream, layout, opt, 3);
  // `onebit train`'s compression stage: refreshes (after 1 and 3 steps), tracked scales, scale groups.
  opt.refresh_interval = 1;
  opt.track_scales = 1;
  opt.scale_group = kAutoScaleGroup;
  const bool same_defaults = onebit_lamb_equal(comm, stream, layout, opt, 5);
  out["onebit_lamb_steps_bitwise_equal"] = same_lamb;
  out["onebit_lamb_default_steps_bitwise_equal"] = same_defaults;
  std::cerr << "gpu bench: CPU check: allreduce " << (same ? "equal" : "DIFFERENT") << ", 1-bit LAMB "
            << (same_lamb ? "equal" : "DIFFERENT") << ", with the defaults " << (same_defaults ? "equal" : "DIFFERENT")
            << "\n";
  return out;
}

// The device, and the reference numbers the results are compared with.
json header(const cudaDeviceProp& prop) {
  json j;
  j["bench"] = "gpu";
  j["device"] = prop.name;
  j["device_memory_GB"] = static_cast<double>(prop.totalGlobalMem) / 1e9;
  j["reference"] = {{"source", "issue 6: the authors' implementation on an H100, world size 1"},
                    {"compressed_allreduce_ms", 43}, {"lamb_step_ms", 85},
                    {"onebit_lamb_step_without_allreduce_ms", 104}, {"torch_adamw_fused_ms", 4.5},
                    {"copy_TBps", 2.98}};
  return j;
}

// The timings and the CPU check, added to j, over NCCL where built (else the local backend).
void measure(json& j, const Options& o) {
  auto body = [&](Communicator& comm, Stream stream) {
    j.update(bench(comm, stream, o));
    if (!o.cpu_check) return;
    try {  // the timings above are kept whatever happens here
      j["cpu_check"] = cpu_check(comm, stream, o);
    } catch (const std::exception& e) {
      j["cpu_check"] = {{"error", e.what()}};
      std::cerr << "gpu bench: CPU check failed: " << e.what() << "\n";
    }
  };
#ifdef ONEBIT_HAVE_NCCL
  auto comm = make_nccl_communicator_single(0);
  comm->set_stream_ordered(true);  // collectives enqueue only: the step needs no host round trip
  body(*comm, comm->stream());
#else
  // Without NCCL the collectives are staged through host memory: slower, and said so in the JSON.
  run_local(1, [&](Communicator& comm) {
    cudaStream_t s;
    check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "stream");
    body(comm, s);
    cudaStreamDestroy(s);
  });
#endif
}

// Prints j, and writes it to --out (auto: bench/results/<device>.json).
void write_json(const json& j, const Options& o, const std::string& device) {
  const std::string text = j.dump(2);
  std::cout << text << "\n";
  const std::string path = o.out.empty() ? "" : o.out == "auto" ? "bench/results/" + file_name(device) + ".json" : o.out;
  if (!path.empty()) {
    std::ofstream f(path);
    if (!f) throw Error("gpu bench: cannot write " + path);
    f << text << "\n";
    std::cerr << "gpu bench: wrote " << path << "\n";
  }
}

int run(const Options& o) {
  check(cudaSetDevice(0), "set device");
  cudaDeviceProp prop{};
  check(cudaGetDeviceProperties(&prop, 0), "properties");
  json j = header(prop);
  measure(j, o);
  const auto& r = j["results"];
  j["speedup_vs_reference"] = {
      {"compressed_allreduce", 43.0 / r["compressed_allreduce"]["ms_median"].get<double>()},
      {"lamb_step", 85.0 / r["lamb_step"]["ms_median"].get<double>()},
      {"onebit_lamb_compression_step", 104.0 / r["onebit_lamb_compression_step"]["ms_median"].get<double>()}};
  write_json(j, o, prop.name);
  return 0;
}

}  // namespace
}  // namespace onebit::cuda

int main(int argc, char** argv) {
  onebit::cuda::Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw onebit::Error("gpu bench: " + a + " needs a value");
      return argv[++i];
    };
    try {
      if (a == "--params") o.params = std::stoull(value());
      else if (a == "--iterations") o.iterations = std::stoi(value());
      else if (a == "--out") o.out = value();
      else if (a == "--no-cpu-check") o.cpu_check = false;
      else throw onebit::Error("gpu bench: unknown option " + a +
                               " (--params N, --iterations K, --out FILE|auto, --no-cpu-check)");
    } catch (const std::exception& e) {
      std::cerr << e.what() << "\n";
      return 2;
    }
  }
  if (!onebit::cuda::device_available()) {
    std::cerr << "gpu bench: no CUDA device\n";
    return 1;
  }
  try {
    return onebit::cuda::run(o);
  } catch (const std::exception& e) {
    std::cerr << e.what() << "\n";
    return 1;
  }
}
