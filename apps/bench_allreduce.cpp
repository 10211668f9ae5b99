// `onebit bench allreduce`: the 1-bit compressed allreduce against the backend's own fp32 allreduce
// of the same buffer (and the warmup's bf16 exchange), on P ranks: bytes each rank sends and the time of each.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdlib>
#include <iostream>

#include "bench_common.hpp"
#include "lan_cmd.hpp"
#include "onebit/compressed_allreduce.hpp"
#include "onebit/error.hpp"
#include "onebit/half_allreduce.hpp"
#include "onebit/kernels.hpp"
#include "onebit/local_comm.hpp"
#include "onebit/mpi_comm.hpp"
#include "plan_model.hpp"
#include "proc/proc.hpp"
#ifdef ONEBIT_HAVE_TORCH
#include "train/distributed.hpp"  // how a gloo rank joins: as `onebit train` workers do
#endif

namespace onebit::bench {
namespace {

struct Measured {
  uint64_t bytes_compressed = 0, bytes_fp32 = 0, bytes_bf16 = 0;
  double seconds_compressed = 0, seconds_fp32 = 0, seconds_bf16 = 0;  // bf16: the warmup's 16-bit exchange
  // Seconds inside the collectives (the rest is the kernels' compute), for the rank with the least
  // and the most: the least is the last to arrive, so it is close to the transfer alone.
  double in_collectives_compressed[2] = {0, 0}, in_collectives_fp32[2] = {0, 0}, in_collectives_bf16[2] = {0, 0};
};

// The time of one collective is its slowest rank's: gather every rank's samples, take the max of
// each repeat, then the median over repeats. Every rank returns the same value.
double slowest_rank_median(Communicator& comm, const std::vector<double>& mine) {
  std::vector<double> all(mine.size() * static_cast<size_t>(comm.size()));
  comm.allgather_values(std::span<const double>(mine), std::span<double>(all));
  std::vector<double> worst(mine.size(), 0.0);
  for (size_t i = 0; i < all.size(); ++i) worst[i % mine.size()] = std::max(worst[i % mine.size()], all[i]);
  return median(worst);
}

// As slowest_rank_median, but the median over repeats of the fastest and of the slowest rank.
void rank_range_median(Communicator& comm, const std::vector<double>& mine, double out[2]) {
  std::vector<double> all(mine.size() * static_cast<size_t>(comm.size()));
  comm.allgather_values(std::span<const double>(mine), std::span<double>(all));
  std::vector<double> least(mine.size(), 1e300), most(mine.size(), 0.0);
  for (size_t i = 0; i < all.size(); ++i) {
    least[i % mine.size()] = std::min(least[i % mine.size()], all[i]);
    most[i % mine.size()] = std::max(most[i % mine.size()], all[i]);
  }
  out[0] = median(least);
  out[1] = median(most);
}

// One rank's part of the benchmark. Both collectives start from the same input each time, so
// neither sees values the other has grown or shrunk.
Measured measure(Communicator& comm, const AllreduceOptions& o) {
  const size_t n = o.elements;
  ThreadPool pool(o.threads);
  AlignedVector<float> input(n), x(n);
  fill_random(input, static_cast<uint64_t>(comm.rank()) + 1);
  CompressedAllreduce compressed(comm, pool, n);
  HalfAllreduce bf16(comm, pool, n, WirePrecision::kBf16);

  // The first call is untimed (page faults, connection set-up) and is the one whose bytes count.
  auto run = [&](const std::function<void()>& op, uint64_t& bytes, double in_collectives[2]) {
    std::copy(input.begin(), input.end(), x.begin());
    comm.reset_stats();
    op();
    bytes = comm.stats().bytes_sent;
    std::vector<double> times, comm_times;
    for (int r = 0; r < o.repeats; ++r) {
      std::copy(input.begin(), input.end(), x.begin());
      comm.barrier();
      const double before = comm.stats().seconds;
      const auto t0 = std::chrono::steady_clock::now();
      op();
      times.push_back(seconds_since(t0));
      comm_times.push_back(comm.stats().seconds - before);
    }
    rank_range_median(comm, comm_times, in_collectives);
    return slowest_rank_median(comm, times);
  };
  Measured m;
  m.seconds_compressed = run(
      [&] {
        if (!compressed.run(x)) throw Error("bench allreduce: the compressed allreduce saw a non-finite input");
      },
      m.bytes_compressed, m.in_collectives_compressed);
  m.seconds_fp32 = run([&] { comm.allreduce_sum(x); }, m.bytes_fp32, m.in_collectives_fp32);
  m.seconds_bf16 = run([&] { bf16.average(x); }, m.bytes_bf16, m.in_collectives_bf16);
  return m;
}

// The benchmark at o.elements, and with --calibration at two smaller sizes too, whose fit rank 0
// writes for `onebit plan`.
Measured measure_and_calibrate(Communicator& comm, const AllreduceOptions& o) {
  const Measured m = measure(comm, o);
  if (o.calibration.empty()) return m;
  ONEBIT_CHECK(comm.size() >= 2, "bench allreduce --calibration: needs at least 2 workers");
  std::vector<plan::Sample> samples{{static_cast<double>(o.elements), m.seconds_fp32, m.seconds_compressed,
                                     m.seconds_bf16, m.in_collectives_bf16[0]}};
  for (size_t divisor : {10, 100}) {
    AllreduceOptions smaller = o;
    smaller.elements = std::max<size_t>(o.elements / divisor, 64 * static_cast<size_t>(comm.size()));
    const Measured s = measure(comm, smaller);
    samples.push_back({static_cast<double>(smaller.elements), s.seconds_fp32, s.seconds_compressed, s.seconds_bf16,
                       s.in_collectives_bf16[0]});
  }
  const double nominal = o.rate.empty() ? 0.0 : lan::make_shape(o.rate, o.delay).rate_bits_per_s / 8.0;
  // Every rank of this benchmark runs on this machine (mpirun's local ranks, or onebit lan's namespaces).
  plan::Calibration c = plan::fit(samples, comm.size(), nominal, machine_json()["cores"].get<int>());
  c.source += ", backend " + o.backend + (o.rate.empty() ? "" : ", links shaped to " + o.rate);
  if (comm.rank() == 0) plan::save_calibration(o.calibration, c);
  return m;
}

std::string transport(const AllreduceOptions& o) {
  // The local backend's ranks are threads of one process: its "wire" is memory.
  if (o.backend == "local") return "in-process threads, no network";
  const std::string start = o.backend == "mpi" ? "processes under mpirun" : "processes joined by a TCPStore rendezvous";
  if (!o.rate.empty()) return start + ", one per network namespace, TCP over shaped veth links";
  return o.backend == "mpi" ? start : start + ", TCP over loopback";
}

// The shaped network the ranks ran in (onebit lan), or null for none.
nlohmann::json network_json(const AllreduceOptions& o) {
  if (o.rate.empty()) return nullptr;
  const lan::LinkShape s = lan::make_shape(o.rate, o.delay);
  return {{"rate", s.rate_text},
          {"rate_bits_per_s", s.rate_bits_per_s},
          {"delay", s.delay_text},
          {"delay_s", static_cast<double>(s.delay_us) * 1e-6},
          {"workers", o.workers},
          {"shaping", "tc tbf on both directions of each worker's veth, netem delay on the worker side"}};
}

nlohmann::json to_json(const AllreduceOptions& o, const Measured& m) {
  return {
      {"bench", "allreduce"},
      {"backend", o.backend},
      {"transport", transport(o)},
      {"network", network_json(o)},
      {"workers", o.workers},
      {"elements", o.elements},
      {"threads_per_rank", o.threads},
      {"repeats", o.repeats},
      {"isa", kernels::isa_name(kernels::active_isa())},
      {"bytes_per_rank", {{"compressed", m.bytes_compressed}, {"fp32", m.bytes_fp32}, {"bf16", m.bytes_bf16}}},
      {"seconds", {{"compressed", m.seconds_compressed}, {"fp32", m.seconds_fp32}, {"bf16", m.seconds_bf16}}},
      {"seconds_in_collectives",
       {{"compressed", {{"least_rank", m.in_collectives_compressed[0]}, {"most_rank", m.in_collectives_compressed[1]}}},
        {"fp32", {{"least_rank", m.in_collectives_fp32[0]}, {"most_rank", m.in_collectives_fp32[1]}}},
        {"bf16", {{"least_rank", m.in_collectives_bf16[0]}, {"most_rank", m.in_collectives_bf16[1]}}}}},
      {"byte_ratio", m.bytes_compressed ? static_cast<double>(m.bytes_fp32) / static_cast<double>(m.bytes_compressed) : 0.0},
      {"time_ratio", m.seconds_fp32 / m.seconds_compressed},
      {"machine", machine_json()},
  };
}

void print_text(std::ostream& os, const AllreduceOptions& o, const nlohmann::json& j, const Measured& m) {
  os << "allreduce of " << o.elements << " fp32 elements on " << o.workers << " ranks, median of "
     << o.repeats << " (slowest rank)\n";
  os << "backend " << o.backend << ": " << j["transport"].get<std::string>() << "\n";
  if (!o.rate.empty())
    os << "network: " << o.workers << " workers, each link " << o.rate << " both ways, " << o.delay
       << " one-way delay\n";
  print_table(os, {{"", "bytes sent/rank", "seconds", "in collectives (ranks' range)"},
                   {"compressed (1-bit)", human_bytes(static_cast<double>(m.bytes_compressed)), fixed(m.seconds_compressed, 6),
                    fixed(m.in_collectives_compressed[0], 6) + " - " + fixed(m.in_collectives_compressed[1], 6)},
                   {"fp32 (" + o.backend + ")", human_bytes(static_cast<double>(m.bytes_fp32)), fixed(m.seconds_fp32, 6),
                    fixed(m.in_collectives_fp32[0], 6) + " - " + fixed(m.in_collectives_fp32[1], 6)},
                   {"bf16 (warmup exchange)", human_bytes(static_cast<double>(m.bytes_bf16)), fixed(m.seconds_bf16, 6),
                    fixed(m.in_collectives_bf16[0], 6) + " - " + fixed(m.in_collectives_bf16[1], 6)}});
  os << "byte_ratio (fp32 / compressed): " << fixed(j["byte_ratio"].get<double>(), 2) << "\n";
  os << "time_ratio (fp32 / compressed, speedup): " << fixed(j["time_ratio"].get<double>(), 3) << "\n";
  os << "machine: " << j["machine"]["cpu"].get<std::string>() << ", " << j["machine"]["cores"].get<int>()
     << " cores\n";
}

}  // namespace

CLI::App* add_allreduce_command(CLI::App& bench, AllreduceOptions& o) {
  CLI::App* c = bench.add_subcommand("allreduce", "compressed 1-bit allreduce against the backend's fp32 allreduce");
  c->add_option("--workers", o.workers, "ranks")->required()->check(CLI::Range(1, 4096));
  c->add_option("--elements", o.elements, "fp32 elements per rank")->required()->check(positive_integer, "POSITIVE");
  c->add_option("--backend", o.backend,
                "local (threads in this process), mpi (processes under mpirun) or gloo (processes over "
                "PyTorch's Gloo through c10d, as `onebit train` joins); default: local, with --rate gloo")
      ->check(CLI::IsMember({"local", "mpi", "gloo"}));
  c->add_option("--threads", o.threads, "kernel threads per rank")->check(CLI::Range(1, 1024))->capture_default_str();
  c->add_option("--repeats", o.repeats, "timed runs (median reported)")->check(CLI::Range(1, 100000))->capture_default_str();
  c->add_flag("--json", o.json, "print JSON instead of a table");
  c->add_option("--out", o.out, "also write the JSON to this file");
  c->add_option("--rate", o.rate,
                "run the ranks in a shaped network (onebit lan; root, --backend mpi or gloo): each link's rate, "
                "both directions (100mbit, 1gbit)");
  c->add_option("--delay", o.delay, "with --rate: one-way latency between two workers (500us, 1ms)")
      ->capture_default_str();
  c->add_option("--calibration", o.calibration,
                "also time elements/10 and elements/100, fit the constants of `onebit plan` and write them to this file");
  c->add_option("--timeout", o.timeout_s,
                "seconds before the whole run of the worker processes is killed (with --rate, the network's set-up too)")
      ->check(number_in(1, 1e7), "SECONDS")
      ->capture_default_str();
  c->footer(example("onebit bench allreduce --rate 1gbit --workers 2 --elements 1000000 --json"));
  return c;
}

namespace {

// Measures on this rank and reports from rank 0.
int measure_and_report(Communicator& comm, const AllreduceOptions& o) {
  if (comm.size() != o.workers)
    throw Error("bench allreduce: --workers " + std::to_string(o.workers) + " but the " + o.backend + " world has " +
                std::to_string(comm.size()) + " ranks");
  const Measured m = measure_and_calibrate(comm, o);
  if (comm.rank() == 0) {
    const nlohmann::json j = to_json(o, m);
    emit(j, o.json, o.out, [&](std::ostream& os) { print_text(os, o, j, m); });
  }
  return 0;
}

std::chrono::milliseconds whole_run_timeout(const AllreduceOptions& o) {
  return std::chrono::milliseconds(static_cast<int64_t>(o.timeout_s * 1000));
}

// Starts this same command line as the ranks on this machine (under mpirun, or over loopback for
// gloo) and returns their exit status, having said why when they did not all succeed.
int launch_local_ranks(const AllreduceOptions& o, const std::vector<std::string>& args) {
  proc::RankLaunch l;
  l.args = args;
  l.workers = o.workers;
  l.mpi = o.backend == "mpi";
  l.supervision.timeout = whole_run_timeout(o);
  l.supervision.grace = std::chrono::seconds(5);
  l.what = "bench allreduce";
  const proc::Outcome out = proc::launch_ranks(l);
  if (out.interrupted_by)
    std::cerr << "onebit: bench allreduce: " << proc::Interrupted(out.interrupted_by).what() << "; stopped the ranks\n";
  else if (out.timed_out)
    std::cerr << "onebit: bench allreduce: still running after --timeout " << o.timeout_s << " s; stopped the ranks\n";
  else if (!out.ok())
    std::cerr << "onebit: bench allreduce: " << out.failure << "; stopped the others\n";
  return out.exit_code;
}

// Gloo through c10d: the ranks join exactly as `onebit train` workers do (RANK, WORLD_SIZE,
// MASTER_ADDR, MASTER_PORT), started as local ranks (proc/), or one per namespace with --rate.
int run_gloo(const AllreduceOptions& o, const std::vector<std::string>& args) {
#ifdef ONEBIT_HAVE_TORCH
  const auto job = train::detect_job();
  if (!job) {
    if (!o.rate.empty()) {
      std::vector<std::string> command{proc::self_path()};
      command.insert(command.end(), args.begin(), args.end());
      return lan::run_in_network(o.workers, lan::make_shape(o.rate, o.delay), command, whole_run_timeout(o),
                                 "bench allreduce --rate", 29500, /*prefix_stdout=*/false);
    }
    return launch_local_ranks(o, args);
  }
  const std::shared_ptr<Communicator> comm = train::join_job(*job, "gloo", "cpu", whole_run_timeout(o));
  return measure_and_report(*comm, o);
#else
  (void)o, (void)args;
  throw Error("bench allreduce --backend gloo: this onebit was built without libtorch (install libtorch-dev and "
              "reconfigure)");
#endif
}

}  // namespace

int run_allreduce(const AllreduceOptions& given, const std::vector<std::string>& args) {
  AllreduceOptions o = given;
  if (o.backend.empty()) o.backend = o.rate.empty() ? "local" : "gloo";  // the ranks resolve it alike
  if (!o.rate.empty()) {
    lan::make_shape(o.rate, o.delay);  // a bad --rate fails here, before anything starts
    if (o.backend == "local")
      throw Error("bench allreduce --rate: needs --backend mpi or gloo (one rank process per network namespace); "
                  "the local backend's ranks are threads of one process");
  }
  if (o.backend == "gloo") return run_gloo(o, args);
  if (o.backend == "local") {
    Measured result;
    run_local(o.workers, [&](Communicator& comm) {
      const Measured m = measure_and_calibrate(comm, o);
      if (comm.rank() == 0) result = m;
    });
    const nlohmann::json j = to_json(o, result);
    emit(j, o.json, o.out, [&](std::ostream& os) { print_text(os, o, j, result); });
    return 0;
  }

  if (!mpi_available())
    throw Error("bench allreduce --backend mpi: this onebit was built without MPI (install OpenMPI and "
                "configure with -DONEBIT_WITH_MPI=ON)");
  if (std::getenv("OMPI_COMM_WORLD_SIZE") == nullptr) {
    if (o.rate.empty()) return launch_local_ranks(o, args);
    // The ranks run this same command line: they see OMPI_COMM_WORLD_SIZE and measure, and rank 0
    // reports the network from the --rate/--delay it was given.
    return lan::run_mpi_in_network(o.workers, lan::make_shape(o.rate, o.delay), args, whole_run_timeout(o),
                                   "bench allreduce --rate");
  }
  return measure_and_report(*make_mpi_communicator(), o);
}

}  // namespace onebit::bench
