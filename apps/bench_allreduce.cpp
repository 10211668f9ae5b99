// `onebit bench allreduce`: the 1-bit compressed allreduce against the backend's own fp32 allreduce
// of the same buffer, on P ranks: bytes each rank sends and the time of each.
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>

#include "bench_common.hpp"
#include "onebit/compressed_allreduce.hpp"
#include "onebit/error.hpp"
#include "onebit/kernels.hpp"
#include "onebit/local_comm.hpp"
#include "onebit/mpi_comm.hpp"

namespace onebit::bench {
namespace {

struct Measured {
  uint64_t bytes_compressed = 0, bytes_fp32 = 0;
  double seconds_compressed = 0, seconds_fp32 = 0;
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

// One rank's part of the benchmark. Both collectives start from the same input each time, so
// neither sees values the other has grown or shrunk.
Measured measure(Communicator& comm, const AllreduceOptions& o) {
  const size_t n = o.elements;
  ThreadPool pool(o.threads);
  AlignedVector<float> input(n), x(n);
  fill_random(input, static_cast<uint64_t>(comm.rank()) + 1);
  CompressedAllreduce compressed(comm, pool, n);

  // The first call is untimed (page faults, connection set-up) and is the one whose bytes count.
  auto run = [&](const std::function<void()>& op, uint64_t& bytes) {
    std::copy(input.begin(), input.end(), x.begin());
    comm.reset_stats();
    op();
    bytes = comm.stats().bytes_sent;
    std::vector<double> times;
    for (int r = 0; r < o.repeats; ++r) {
      std::copy(input.begin(), input.end(), x.begin());
      comm.barrier();
      const auto t0 = std::chrono::steady_clock::now();
      op();
      times.push_back(seconds_since(t0));
    }
    return slowest_rank_median(comm, times);
  };
  Measured m;
  m.seconds_compressed = run(
      [&] {
        if (!compressed.run(x)) throw Error("bench allreduce: the compressed allreduce saw a non-finite input");
      },
      m.bytes_compressed);
  m.seconds_fp32 = run([&] { comm.allreduce_sum(x); }, m.bytes_fp32);
  return m;
}

nlohmann::json to_json(const AllreduceOptions& o, const Measured& m) {
  return {
      {"bench", "allreduce"},
      {"backend", o.backend},
      // The local backend's ranks are threads of one process: its "wire" is memory.
      {"transport", o.backend == "local" ? "in-process threads, no network" : "processes under mpirun"},
      {"workers", o.workers},
      {"elements", o.elements},
      {"threads_per_rank", o.threads},
      {"repeats", o.repeats},
      {"isa", kernels::isa_name(kernels::active_isa())},
      {"bytes_per_rank", {{"compressed", m.bytes_compressed}, {"fp32", m.bytes_fp32}}},
      {"seconds", {{"compressed", m.seconds_compressed}, {"fp32", m.seconds_fp32}}},
      {"byte_ratio", m.bytes_compressed ? static_cast<double>(m.bytes_fp32) / static_cast<double>(m.bytes_compressed) : 0.0},
      {"time_ratio", m.seconds_fp32 / m.seconds_compressed},
      {"machine", machine_json()},
  };
}

void print_text(std::ostream& os, const AllreduceOptions& o, const nlohmann::json& j, const Measured& m) {
  os << "allreduce of " << o.elements << " fp32 elements on " << o.workers << " ranks, median of "
     << o.repeats << " (slowest rank)\n";
  os << "backend " << o.backend << ": " << j["transport"].get<std::string>() << "\n";
  print_table(os, {{"", "bytes sent/rank", "seconds"},
                   {"compressed (1-bit)", human_bytes(static_cast<double>(m.bytes_compressed)), fixed(m.seconds_compressed, 6)},
                   {"fp32 (" + o.backend + ")", human_bytes(static_cast<double>(m.bytes_fp32)), fixed(m.seconds_fp32, 6)}});
  os << "byte_ratio (fp32 / compressed): " << fixed(j["byte_ratio"].get<double>(), 2) << "\n";
  os << "time_ratio (fp32 / compressed, speedup): " << fixed(j["time_ratio"].get<double>(), 3) << "\n";
  os << "machine: " << j["machine"]["cpu"].get<std::string>() << ", " << j["machine"]["cores"].get<int>()
     << " cores\n";
}

// Starts this same command as P processes under mpirun and returns their exit code.
int relaunch_under_mpirun(int workers, const std::vector<std::string>& args) {
  // mpirun's daemons would resolve /proc/self/exe to themselves, so pass the real path.
  const std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
  std::vector<std::string> cmd = {"mpirun", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none",
                                  "-np", std::to_string(workers), self};
  cmd.insert(cmd.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : cmd) argv.push_back(a.data());
  argv.push_back(nullptr);

  std::cout.flush();
  std::cerr.flush();
  const pid_t pid = fork();
  if (pid < 0) throw Error(std::string("bench allreduce: fork failed: ") + std::strerror(errno));
  if (pid == 0) {
    execvp(argv[0], argv.data());
    std::fprintf(stderr, "onebit: bench allreduce: cannot run mpirun: %s\n", std::strerror(errno));
    _exit(127);
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) throw Error(std::string("bench allreduce: waiting for mpirun failed: ") + std::strerror(errno));
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

}  // namespace

CLI::App* add_allreduce_command(CLI::App& bench, AllreduceOptions& o) {
  CLI::App* c = bench.add_subcommand("allreduce", "compressed 1-bit allreduce against the backend's fp32 allreduce");
  c->add_option("--workers", o.workers, "ranks")->required()->check(CLI::Range(1, 4096));
  c->add_option("--elements", o.elements, "fp32 elements per rank")->required()->check(positive_integer, "POSITIVE");
  c->add_option("--backend", o.backend, "local (threads in this process) or mpi (processes under mpirun)")
      ->check(CLI::IsMember({"local", "mpi"}))
      ->capture_default_str();
  c->add_option("--threads", o.threads, "kernel threads per rank")->check(CLI::Range(1, 1024))->capture_default_str();
  c->add_option("--repeats", o.repeats, "timed runs (median reported)")->check(CLI::Range(1, 100000))->capture_default_str();
  c->add_flag("--json", o.json, "print JSON instead of a table");
  c->add_option("--out", o.out, "also write the JSON to this file");
  return c;
}

int run_allreduce(const AllreduceOptions& o, const std::vector<std::string>& args) {
  if (o.backend == "local") {
    Measured result;
    run_local(o.workers, [&](Communicator& comm) {
      const Measured m = measure(comm, o);
      if (comm.rank() == 0) result = m;
    });
    const nlohmann::json j = to_json(o, result);
    emit(j, o.json, o.out, [&](std::ostream& os) { print_text(os, o, j, result); });
    return 0;
  }

  if (!mpi_available())
    throw Error("bench allreduce --backend mpi: this onebit was built without MPI (install OpenMPI and "
                "configure with -DONEBIT_WITH_MPI=ON)");
  if (std::getenv("OMPI_COMM_WORLD_SIZE") == nullptr) return relaunch_under_mpirun(o.workers, args);
  std::unique_ptr<Communicator> comm = make_mpi_communicator();
  if (comm->size() != o.workers)
    throw Error("bench allreduce: --workers " + std::to_string(o.workers) + " but the MPI world has " +
                std::to_string(comm->size()) + " ranks");
  const Measured m = measure(*comm, o);
  if (comm->rank() == 0) {
    const nlohmann::json j = to_json(o, m);
    emit(j, o.json, o.out, [&](std::ostream& os) { print_text(os, o, j, m); });
  }
  return 0;
}

}  // namespace onebit::bench
