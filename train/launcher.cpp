// Starting and supervising local worker processes (see launcher.hpp). Children get
// PR_SET_PDEATHSIG so that a launcher killed with SIGKILL takes its workers with it.
#include "train/launcher.hpp"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "lan/lan.hpp"
#include "onebit/error.hpp"
#include "train/distributed.hpp"

extern char** environ;

namespace onebit::train {
namespace {

volatile std::sig_atomic_t g_interrupted = 0;
void on_signal(int sig) { g_interrupted = sig; }

struct Worker {
  int rank;
  pid_t pid;
  bool running = true;
  int status = 0;
};

// The environment for a child: ours without any job variables, plus `extra`.
std::vector<std::string> child_env(const std::vector<std::string>& extra) {
  static const char* kDrop[] = {"RANK=", "WORLD_SIZE=", "LOCAL_RANK=", "LOCAL_WORLD_SIZE=", "MASTER_ADDR=", "MASTER_PORT="};
  std::vector<std::string> out;
  for (char** e = environ; *e; ++e) {
    bool drop = false;
    for (const char* d : kDrop) drop = drop || std::strncmp(*e, d, std::strlen(d)) == 0;
    if (!drop) out.emplace_back(*e);
  }
  out.insert(out.end(), extra.begin(), extra.end());
  return out;
}

// fork + execve; everything the child touches is prepared before the fork.
pid_t spawn(const std::string& exe, std::vector<std::string> argv, std::vector<std::string> envs) {
  auto cargv = lan::c_strings(argv);
  auto cenv = lan::c_strings(envs);
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  ONEBIT_CHECK(pid >= 0, "onebit train: fork failed: " << std::strerror(errno));
  if (pid == 0) {
    ::signal(SIGINT, SIG_DFL);
    ::signal(SIGTERM, SIG_DFL);
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(1);  // the launcher died before prctl
    ::execve(exe.c_str(), cargv.data(), cenv.data());
    const char msg[] = "onebit train: cannot execute the worker\n";
    [[maybe_unused]] auto n = ::write(2, msg, sizeof msg - 1);
    ::_exit(127);
  }
  return pid;
}

std::string describe(int status) {
  std::ostringstream s;
  if (WIFEXITED(status)) s << "exited with status " << WEXITSTATUS(status);
  else if (WIFSIGNALED(status)) s << "was killed by signal " << WTERMSIG(status) << " (" << strsignal(WTERMSIG(status)) << ")";
  else s << "ended with wait status " << status;
  return s.str();
}

void signal_all(std::vector<Worker>& ws, int sig) {
  for (auto& w : ws)
    if (w.running) ::kill(w.pid, sig);
}

// Waits for the workers; on the first failure or an interrupt stops the rest (SIGTERM, then SIGKILL
// after the grace period). Returns what went wrong, empty when every worker exited with 0.
std::string supervise(std::vector<Worker>& ws, const std::string& what, double grace_seconds) {
  using clock = std::chrono::steady_clock;
  std::string failure;
  clock::time_point kill_at{};
  for (;;) {
    size_t running = 0;
    for (auto& w : ws) {
      if (!w.running) continue;
      int st = 0;
      const pid_t r = ::waitpid(w.pid, &st, WNOHANG);
      if (r == w.pid || (r < 0 && errno == ECHILD)) {
        w.running = false;
        w.status = r == w.pid ? st : 0;
        const bool ok = WIFEXITED(w.status) && WEXITSTATUS(w.status) == 0;
        if (!ok && failure.empty()) {
          failure = what + " " + std::to_string(w.rank) + " (pid " + std::to_string(w.pid) + ") " + describe(w.status);
          signal_all(ws, SIGTERM);
          kill_at = clock::now() + std::chrono::milliseconds(static_cast<int64_t>(grace_seconds * 1000));
        }
      } else {
        ++running;
      }
    }
    if (running == 0) return failure;
    if (g_interrupted && failure.empty()) {
      failure = std::string("interrupted by ") + strsignal(g_interrupted);
      signal_all(ws, SIGTERM);
      kill_at = clock::now() + std::chrono::milliseconds(static_cast<int64_t>(grace_seconds * 1000));
    }
    if (!failure.empty() && clock::now() >= kill_at) signal_all(ws, SIGKILL);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

}  // namespace

void launch_workers(const LaunchOptions& o) {
  ONEBIT_CHECK(o.workers >= 1, "onebit train: --workers must be at least 1, not " << o.workers);
  const std::string exe = lan::self_path();
  g_interrupted = 0;
  struct sigaction sa {}, old_int{}, old_term{};
  sa.sa_handler = on_signal;
  ::sigemptyset(&sa.sa_mask);
  ::sigaction(SIGINT, &sa, &old_int);
  ::sigaction(SIGTERM, &sa, &old_term);

  std::vector<Worker> ws;
  std::string what;
  try {
    if (o.backend == "mpi") {
      // One mpirun starts and wires the ranks; the workers join through OMPI_COMM_WORLD_*.
      std::vector<std::string> argv{"mpirun"};
      if (::geteuid() == 0) argv.push_back("--allow-run-as-root");
      for (const char* a : {"--oversubscribe", "--bind-to", "none", "-np"}) argv.push_back(a);
      argv.push_back(std::to_string(o.workers));
      argv.push_back(exe);
      argv.insert(argv.end(), o.args.begin(), o.args.end());
      // execve needs a path: mpirun from PATH.
      std::string mpirun = "mpirun";
      if (const char* path = std::getenv("PATH")) {
        std::stringstream dirs(path);
        for (std::string d; std::getline(dirs, d, ':');)
          if (!d.empty() && ::access((d + "/mpirun").c_str(), X_OK) == 0) {
            mpirun = d + "/mpirun";
            break;
          }
      }
      ONEBIT_CHECK(mpirun != "mpirun", "onebit train --backend mpi --workers " << o.workers
                                                                              << ": mpirun is not on PATH (install openmpi-bin)");
      ws.push_back({0, spawn(mpirun, argv, child_env({}))});
      what = "mpirun";
    } else {
      const int port = free_loopback_port();
      for (int r = 0; r < o.workers; ++r) {
        std::vector<std::string> argv{exe};
        argv.insert(argv.end(), o.args.begin(), o.args.end());
        auto envs = child_env({"RANK=" + std::to_string(r), "LOCAL_RANK=" + std::to_string(r),
                               "WORLD_SIZE=" + std::to_string(o.workers), "LOCAL_WORLD_SIZE=" + std::to_string(o.workers),
                               "MASTER_ADDR=127.0.0.1", "MASTER_PORT=" + std::to_string(port)});
        ws.push_back({r, spawn(exe, std::move(argv), std::move(envs))});
      }
      what = "worker rank";
    }
    if (!o.pid_file.empty()) {
      std::ofstream pids(o.pid_file);
      for (const auto& w : ws) pids << w.rank << " " << w.pid << "\n";
    }
  } catch (...) {
    signal_all(ws, SIGKILL);
    for (auto& w : ws) ::waitpid(w.pid, nullptr, 0);
    ::sigaction(SIGINT, &old_int, nullptr);
    ::sigaction(SIGTERM, &old_term, nullptr);
    throw;
  }
  const std::string failure = supervise(ws, what, o.grace_seconds);
  ::sigaction(SIGINT, &old_int, nullptr);
  ::sigaction(SIGTERM, &old_term, nullptr);
  ONEBIT_CHECK(failure.empty(), "onebit train: " << failure << "; stopped the other workers");
}

}  // namespace onebit::train
