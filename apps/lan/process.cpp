// Starting, watching and stopping the processes of `onebit lan`: signal capture, bounded waits,
// process groups, and line-prefixed output.
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <map>
#include <thread>

#include "lan.hpp"

extern char** environ;

namespace onebit::lan {

std::vector<char*> c_strings(std::vector<std::string>& v) {
  std::vector<char*> out;
  for (auto& s : v) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

namespace {

volatile sig_atomic_t g_signal = 0;

void on_signal(int sig) { g_signal = sig; }

constexpr int kStopSignals[] = {SIGINT, SIGTERM, SIGHUP};

std::string errno_text() { return std::strerror(errno); }

using Clock = std::chrono::steady_clock;

// This environment with `extra` ("NAME=value") added, replacing same-named entries.
std::vector<std::string> merged_env(const std::vector<std::string>& extra) {
  std::map<std::string, std::string> vars;
  for (char** e = environ; *e; ++e) {
    const std::string kv = *e;
    vars[kv.substr(0, kv.find('='))] = kv;
  }
  for (const auto& kv : extra) vars[kv.substr(0, kv.find('='))] = kv;
  std::vector<std::string> out;
  for (auto& [k, kv] : vars) out.push_back(std::move(kv));
  return out;
}

struct Running {
  pid_t pid = -1;
  int fds[2] = {-1, -1};  // stdout, stderr read ends when captured
  std::string partial[2];
  int status = -1;
  bool reaped() const { return status >= 0; }
};

// Forks and execs one process. Everything the child needs is prepared before fork: only
// async-signal-safe calls happen between fork and exec.
Running start(const ProcessSpec& spec) {
  if (spec.argv.empty()) throw Error("lan: " + spec.label + ": empty command");
  std::vector<std::string> argv = spec.argv;
  std::vector<std::string> env = merged_env(spec.env);
  std::vector<char*> c_argv = c_strings(argv), c_env = c_strings(env);

  int ns_fd = -1;
  if (!spec.netns.empty()) {
    const std::string path = "/var/run/netns/" + spec.netns;
    ns_fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (ns_fd < 0) throw Error("lan: " + spec.label + ": cannot open namespace " + path + ": " + errno_text());
  }
  int out_pipe[2] = {-1, -1}, err_pipe[2] = {-1, -1};
  auto close_all = [&] {
    for (int fd : {ns_fd, out_pipe[0], out_pipe[1], err_pipe[0], err_pipe[1]})
      if (fd >= 0) close(fd);
  };
  if (spec.capture && (pipe2(out_pipe, O_CLOEXEC) != 0 || pipe2(err_pipe, O_CLOEXEC) != 0)) {
    const std::string why = errno_text();
    close_all();
    throw Error("lan: " + spec.label + ": pipe failed: " + why);
  }

  std::cout.flush();
  std::cerr.flush();
  const pid_t parent = getpid();
  // The stop signals stay blocked across fork until the child has its default handlers back: a
  // SIGTERM sent to its group before exec would otherwise only set a flag in the child's copy of
  // onebit and be lost.
  sigset_t stop_set, old_mask;
  sigemptyset(&stop_set);
  for (int sig : kStopSignals) sigaddset(&stop_set, sig);
  sigprocmask(SIG_BLOCK, &stop_set, &old_mask);
  const pid_t pid = fork();
  if (pid == 0) {
    // Own process group: a terminal's Ctrl-C reaches only onebit, which then stops the group.
    setpgid(0, 0);
    // If onebit itself dies (SIGKILL), its children die too instead of running on unsupervised.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(126);
    for (int sig : kStopSignals) signal(sig, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    if (spec.capture) {
      dup2(out_pipe[1], 1);
      dup2(err_pipe[1], 2);
    }
    if (ns_fd >= 0 && setns(ns_fd, CLONE_NEWNET) != 0) {
      dprintf(2, "onebit: lan: %s: cannot enter namespace %s: %s\n", spec.label.c_str(), spec.netns.c_str(),
              std::strerror(errno));
      _exit(126);
    }
    execvpe(c_argv[0], c_argv.data(), c_env.data());
    dprintf(2, "onebit: lan: %s: cannot run %s: %s\n", spec.label.c_str(), c_argv[0], std::strerror(errno));
    _exit(127);
  }
  const int fork_errno = errno;
  sigprocmask(SIG_SETMASK, &old_mask, nullptr);
  if (pid < 0) {
    close_all();
    throw Error("lan: " + spec.label + ": fork failed: " + std::strerror(fork_errno));
  }
  setpgid(pid, pid);  // also here, so that signalling the group cannot race the child's own call
  Running r;
  r.pid = pid;
  r.fds[0] = out_pipe[0];  // -1 when not captured
  r.fds[1] = err_pipe[0];
  out_pipe[0] = err_pipe[0] = -1;  // kept: the read ends
  close_all();
  return r;
}

int decode(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

void reap(std::vector<Running>& procs) {
  for (auto& p : procs) {
    if (p.reaped()) continue;
    int status = 0;
    const pid_t got = waitpid(p.pid, &status, WNOHANG);
    if (got == p.pid) p.status = decode(status);
  }
}

void signal_groups(std::vector<Running>& procs, int sig) {
  for (auto& p : procs)
    if (!p.reaped()) kill(-p.pid, sig);
}

// Reads what is available on every open pipe (waiting at most `wait`) and prints whole lines.
void pump(std::vector<Running>& procs, const std::vector<ProcessSpec>& specs, std::chrono::milliseconds wait,
          bool flush_partial) {
  std::vector<pollfd> fds;
  std::vector<std::pair<size_t, int>> owner;
  for (size_t i = 0; i < procs.size(); ++i)
    for (int s = 0; s < 2; ++s)
      if (procs[i].fds[s] >= 0) {
        fds.push_back({procs[i].fds[s], POLLIN, 0});
        owner.emplace_back(i, s);
      }
  if (fds.empty()) {
    if (wait.count() > 0) std::this_thread::sleep_for(std::min(wait, std::chrono::milliseconds(50)));
    return;
  }
  if (poll(fds.data(), fds.size(), static_cast<int>(wait.count())) < 0) return;  // EINTR: caller looks
  char buf[65536];
  for (size_t k = 0; k < fds.size(); ++k) {
    if (!(fds[k].revents & (POLLIN | POLLHUP | POLLERR))) continue;
    auto [i, s] = owner[k];
    Running& p = procs[i];
    const ssize_t n = read(p.fds[s], buf, sizeof buf);
    if (n <= 0) {
      close(p.fds[s]);
      p.fds[s] = -1;
      flush_partial = true;
    } else {
      p.partial[s].append(buf, static_cast<size_t>(n));
    }
    std::ostream& os = s == 0 ? std::cout : std::cerr;
    const std::string prefix = s == 0 && !specs[i].prefix_stdout ? "" : "[" + specs[i].label + "] ";
    size_t start = 0;
    for (size_t nl; (nl = p.partial[s].find('\n', start)) != std::string::npos; start = nl + 1)
      os << prefix << std::string_view(p.partial[s]).substr(start, nl + 1 - start);
    p.partial[s].erase(0, start);
    if (flush_partial && p.fds[s] < 0 && !p.partial[s].empty()) {
      os << prefix << p.partial[s] << "\n";
      p.partial[s].clear();
    }
    os.flush();
  }
}

bool all_reaped(const std::vector<Running>& procs) {
  return std::all_of(procs.begin(), procs.end(), [](const Running& p) { return p.reaped(); });
}

}  // namespace

// --- signals -----------------------------------------------------------------------------------

Interrupted::Interrupted(int sig)
    : Error(std::string("interrupted by ") + (sig == SIGINT ? "SIGINT" : sig == SIGTERM ? "SIGTERM" : "SIGHUP")),
      signal_(sig) {}

namespace {
struct sigaction g_previous[3];
}

SignalGuard::SignalGuard() {
  g_signal = 0;
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;  // no SA_RESTART: a blocking poll returns so the loop can look at the flag
  for (int i = 0; i < 3; ++i) sigaction(kStopSignals[i], &sa, &g_previous[i]);
}

SignalGuard::~SignalGuard() {
  for (int i = 0; i < 3; ++i) sigaction(kStopSignals[i], &g_previous[i], nullptr);
}

int pending_signal() { return g_signal; }

void throw_if_interrupted() {
  if (g_signal != 0) throw Interrupted(g_signal);
}

// --- running -----------------------------------------------------------------------------------

std::string run_tool(const std::vector<std::string>& argv, const std::string& what, std::chrono::milliseconds timeout) {
  ProcessSpec spec{argv, {"LC_ALL=C"}, "", true, argv.empty() ? "" : argv[0]};
  std::vector<Running> procs{start(spec)};
  std::string output;
  const auto deadline = Clock::now() + timeout;
  char buf[4096];
  while (!all_reaped(procs) || procs[0].fds[0] >= 0 || procs[0].fds[1] >= 0) {
    std::vector<pollfd> fds;
    for (int s = 0; s < 2; ++s)
      if (procs[0].fds[s] >= 0) fds.push_back({procs[0].fds[s], POLLIN, 0});
    if (!fds.empty() && poll(fds.data(), fds.size(), 20) > 0) {
      for (auto& f : fds) {
        if (!(f.revents & (POLLIN | POLLHUP | POLLERR))) continue;
        const ssize_t n = read(f.fd, buf, sizeof buf);
        if (n > 0) {
          output.append(buf, static_cast<size_t>(n));
        } else {
          close(f.fd);
          for (int& fd : procs[0].fds)
            if (fd == f.fd) fd = -1;
        }
      }
    } else if (fds.empty()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    reap(procs);
    if (Clock::now() > deadline) {
      signal_groups(procs, SIGKILL);
      waitpid(procs[0].pid, nullptr, 0);  // SIGKILL ends it promptly
      for (int fd : procs[0].fds)
        if (fd >= 0) close(fd);
      throw Error(what + ": `" + argv[0] + "` did not finish within " +
                  std::to_string(timeout.count()) + " ms; killed it");
    }
  }
  if (procs[0].status != 0) {
    while (!output.empty() && (output.back() == '\n' || output.back() == ' ')) output.pop_back();
    std::string cmd;
    for (const auto& a : argv) cmd += (cmd.empty() ? "" : " ") + a;
    throw Error(what + ": `" + cmd + "` failed (exit " + std::to_string(procs[0].status) + "): " + output);
  }
  return output;
}

Outcome supervise(const std::vector<ProcessSpec>& specs, std::chrono::milliseconds timeout) {
  constexpr auto kGrace = std::chrono::seconds(3);
  std::vector<Running> procs;
  Outcome out;
  try {
    for (const auto& s : specs) procs.push_back(start(s));
  } catch (...) {
    signal_groups(procs, SIGKILL);
    for (auto& p : procs) {
      waitpid(p.pid, nullptr, 0);
      for (int fd : p.fds)
        if (fd >= 0) close(fd);
    }
    throw;
  }
  const auto deadline = Clock::now() + timeout;
  Clock::time_point kill_at{};  // when stopping: the moment SIGTERM turns into SIGKILL
  bool stopping = false, killed = false;
  std::string first_failure;
  auto stop = [&] {
    if (stopping) return;
    stopping = true;
    signal_groups(procs, SIGTERM);
    kill_at = Clock::now() + kGrace;
  };
  while (!all_reaped(procs)) {
    pump(procs, specs, std::chrono::milliseconds(50), false);
    reap(procs);
    if (!out.interrupted_by && pending_signal()) {
      out.interrupted_by = pending_signal();
      stop();
    }
    if (!out.timed_out && !stopping && Clock::now() > deadline) {
      out.timed_out = true;
      stop();
    }
    for (size_t i = 0; i < procs.size() && first_failure.empty(); ++i) {
      if (procs[i].reaped() && procs[i].status != 0) {
        first_failure = specs[i].label + " exited with status " + std::to_string(procs[i].status);
        out.exit_code = procs[i].status;
        stop();
      }
    }
    if (stopping && !killed && Clock::now() > kill_at) {
      killed = true;
      signal_groups(procs, SIGKILL);
    }
  }
  // Output a grandchild still holds open is drained for a moment, then dropped: its namespace is
  // about to be emptied anyway.
  const auto drain_until = Clock::now() + std::chrono::seconds(1);
  auto open_pipes = [&] {
    return std::any_of(procs.begin(), procs.end(), [](const Running& p) { return p.fds[0] >= 0 || p.fds[1] >= 0; });
  };
  while (open_pipes() && Clock::now() < drain_until) pump(procs, specs, std::chrono::milliseconds(50), true);
  for (auto& p : procs)
    for (int& fd : p.fds)
      if (fd >= 0) {
        close(fd);
        fd = -1;
      }

  for (auto& p : procs) out.status.push_back(p.status);
  if (out.interrupted_by) {
    out.exit_code = 128 + out.interrupted_by;
    std::cerr << "onebit: lan: " << Interrupted(out.interrupted_by).what()
              << "; stopped every process, tearing the network down\n";
  } else if (out.timed_out) {
    out.exit_code = 124;  // as timeout(1)
    std::cerr << "onebit: lan: still running after the time limit of " << timeout.count() / 1000.0
              << " s; stopped every process\n";
  } else if (!first_failure.empty()) {
    if (out.exit_code <= 0 || out.exit_code > 255) out.exit_code = 1;
    std::cerr << "onebit: lan: " << first_failure << "; stopped the others\n";
  }
  return out;
}

}  // namespace onebit::lan
