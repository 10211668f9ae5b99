// One child process (see proc.hpp): fork+exec with only async-signal-safe calls in between, bounded
// waits, and the texts and signal handling that go with them.
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <map>
#include <sstream>
#include <thread>

#include "proc/proc.hpp"

extern char** environ;

namespace onebit::proc {
namespace {

using Clock = std::chrono::steady_clock;

constexpr int kStopSignals[] = {SIGINT, SIGTERM, SIGHUP};

volatile sig_atomic_t g_signal = 0;
void on_signal(int sig) { g_signal = sig; }

std::string errno_text(int e = errno) { return std::strerror(e); }

// execve's argv / envp: pointers into `v` (which must outlive them), then a null.
std::vector<char*> c_strings(std::vector<std::string>& v) {
  std::vector<char*> out;
  for (auto& s : v) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

// This environment without the names in `unset`, with `extra` ("NAME=value") added, replacing
// same-named entries.
std::vector<std::string> child_env(const std::vector<std::string>& extra, const std::vector<std::string>& unset) {
  std::map<std::string, std::string> vars;
  for (char** e = environ; *e; ++e) {
    const std::string kv = *e;
    vars[kv.substr(0, kv.find('='))] = kv;
  }
  for (const auto& name : unset) vars.erase(name);
  for (const auto& kv : extra) vars[kv.substr(0, kv.find('='))] = kv;
  std::vector<std::string> out;
  for (auto& [k, kv] : vars) out.push_back(std::move(kv));
  return out;
}

// The child's side, between fork and exec: async-signal-safe calls only (no allocation, no locks).
[[noreturn]] void become(const Spec& spec, pid_t parent, int ns_fd, const int out_pipe[2], const int err_pipe[2],
                         std::vector<char*>& argv, std::vector<char*>& envp) {
  // Own process group: a terminal's Ctrl-C reaches only onebit, which then stops the group.
  setpgid(0, 0);
  // If onebit itself dies (SIGKILL), its children die too instead of running on unsupervised.
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != parent) _exit(126);  // onebit died before prctl
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  for (int sig : kStopSignals) sigaction(sig, &dfl, nullptr);
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  if (spec.capture) {
    dup2(out_pipe[1], 1);
    dup2(err_pipe[1], 2);
  }
  if (ns_fd >= 0 && setns(ns_fd, CLONE_NEWNET) != 0) {
    dprintf(2, "onebit: %s: %s: cannot enter namespace %s: %s\n", spec.what.c_str(), spec.label.c_str(),
            spec.netns.c_str(), std::strerror(errno));
    _exit(126);
  }
  execvpe(argv[0], argv.data(), envp.data());
  dprintf(2, "onebit: %s: %s: cannot run %s: %s\n", spec.what.c_str(), spec.label.c_str(), argv[0],
          std::strerror(errno));
  _exit(127);
}

}  // namespace

// --- texts -------------------------------------------------------------------------------------

std::string exit_text(int wait_status) {
  std::ostringstream s;
  if (WIFEXITED(wait_status)) {
    s << "exited with status " << WEXITSTATUS(wait_status);
  } else if (WIFSIGNALED(wait_status)) {
    const int sig = WTERMSIG(wait_status);
    const char* abbrev = sigabbrev_np(sig);
    s << "killed by signal " << sig << " (" << (abbrev ? std::string("SIG") + abbrev : strsignal(sig)) << ")";
  } else {
    s << "ended with wait status " << wait_status;
  }
  return s.str();
}

int exit_code(int wait_status) {
  if (WIFEXITED(wait_status)) return WEXITSTATUS(wait_status);
  if (WIFSIGNALED(wait_status)) return 128 + WTERMSIG(wait_status);
  return 1;
}

std::string human_bytes(double bytes) {
  const char* units[] = {"B", "KB", "MB", "GB", "TB"};
  int u = 0;
  while (bytes >= 1000.0 && u < 4) {
    bytes /= 1000.0;
    ++u;
  }
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f %s", u == 0 ? 0 : 2, bytes, units[u]);
  return buf;
}

std::string self_path() {
  std::error_code ec;
  const auto p = std::filesystem::read_symlink("/proc/self/exe", ec);
  ONEBIT_CHECK(!ec, "onebit: cannot find this executable (/proc/self/exe): " << ec.message());
  return p.string();
}

std::string find_in_path(const std::string& name) {
  if (name.find('/') != std::string::npos) return ::access(name.c_str(), X_OK) == 0 ? name : "";
  const char* path = std::getenv("PATH");
  std::stringstream dirs(path ? path : "");
  for (std::string d; std::getline(dirs, d, ':');)
    if (!d.empty() && ::access((d + "/" + name).c_str(), X_OK) == 0) return d + "/" + name;
  return "";
}

// --- signals -----------------------------------------------------------------------------------

Interrupted::Interrupted(int sig)
    : Error(std::string("interrupted by ") + (sig == SIGINT ? "SIGINT" : sig == SIGTERM ? "SIGTERM" : "SIGHUP")),
      signal_(sig) {}

namespace {
int g_guards = 0;
struct sigaction g_previous[3];
}  // namespace

SignalGuard::SignalGuard() {
  if (g_guards++ > 0) return;
  g_signal = 0;
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;  // no SA_RESTART: a blocking poll returns so the loop can look at the flag
  for (int i = 0; i < 3; ++i) sigaction(kStopSignals[i], &sa, &g_previous[i]);
}

SignalGuard::~SignalGuard() {
  if (--g_guards > 0) return;
  for (int i = 0; i < 3; ++i) sigaction(kStopSignals[i], &g_previous[i], nullptr);
}

int pending_signal() { return g_signal; }

void throw_if_interrupted() {
  if (g_signal != 0) throw Interrupted(g_signal);
}

// --- Child -------------------------------------------------------------------------------------

Child::Child(const Spec& spec) : spec_(spec) {
  const std::string where = spec.what + ": " + spec.label;
  if (spec.argv.empty()) throw Error(where + ": empty command");
  // Everything the child needs is prepared before fork.
  std::vector<std::string> argv = spec.argv, env = child_env(spec.env, spec.unset);
  std::vector<char*> c_argv = c_strings(argv), c_env = c_strings(env);
  int ns_fd = -1, out_pipe[2] = {-1, -1}, err_pipe[2] = {-1, -1};
  auto close_all = [&] {
    for (int fd : {ns_fd, out_pipe[0], out_pipe[1], err_pipe[0], err_pipe[1]})
      if (fd >= 0) close(fd);
  };
  if (!spec.netns.empty() && (ns_fd = open(spec.netns.c_str(), O_RDONLY | O_CLOEXEC)) < 0)
    throw Error(where + ": cannot open namespace " + spec.netns + ": " + errno_text());
  if (spec.capture && (pipe2(out_pipe, O_CLOEXEC) != 0 || pipe2(err_pipe, O_CLOEXEC) != 0)) {
    const std::string why = errno_text();
    close_all();
    throw Error(where + ": pipe failed: " + why);
  }
  std::cout.flush();  // or the child's copy of the buffers would print them again
  std::cerr.flush();
  const pid_t parent = getpid();
  // The stop signals stay blocked across fork until the child has its default handlers back: a
  // SIGTERM sent to its group before exec would otherwise only set a flag in the child's copy of
  // onebit and be lost.
  sigset_t stop_set, old_mask;
  sigemptyset(&stop_set);
  for (int sig : kStopSignals) sigaddset(&stop_set, sig);
  pthread_sigmask(SIG_BLOCK, &stop_set, &old_mask);
  const pid_t pid = fork();
  if (pid == 0) become(spec, parent, ns_fd, out_pipe, err_pipe, c_argv, c_env);
  const int fork_errno = errno;
  pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);
  if (pid < 0) {
    close_all();
    throw Error(where + ": fork failed: " + errno_text(fork_errno));
  }
  setpgid(pid, pid);  // also here, so that signalling the group cannot race the child's own call
  pid_ = pid;
  fds[0] = out_pipe[0];  // -1 when not captured
  fds[1] = err_pipe[0];
  out_pipe[0] = err_pipe[0] = -1;  // kept: the read ends
  close_all();
}

Child::Child(Child&& other) noexcept
    : fds{other.fds[0], other.fds[1]}, partial{std::move(other.partial[0]), std::move(other.partial[1])},
      spec_(std::move(other.spec_)), pid_(other.pid_), status_(other.status_) {
  other.pid_ = -1;
  other.fds[0] = other.fds[1] = -1;
}

Child::~Child() {
  if (pid_ > 0 && !ended()) wait_or_kill(std::chrono::milliseconds(0));
  close_fds();
}

void Child::close_fds() {
  for (int& fd : fds)
    if (fd >= 0) {
      close(fd);
      fd = -1;
    }
}

bool Child::poll() {
  if (ended() || pid_ <= 0) return true;
  int st = 0;
  const pid_t got = waitpid(pid_, &st, WNOHANG);
  if (got == pid_) status_ = st;
  // Someone else reaped it (SIGCHLD ignored): it has ended, how is unknown; counted as a success.
  else if (got < 0 && errno == ECHILD) status_ = 0;
  return ended();
}

std::optional<int> Child::wait_for(std::chrono::milliseconds timeout) {
  const auto start = Clock::now();
  const auto deadline =  // start + timeout, without overflowing for kNoTimeLimit
      timeout >= std::chrono::duration_cast<std::chrono::milliseconds>(Clock::time_point::max() - start)
          ? Clock::time_point::max()
          : start + timeout;
  auto nap = std::chrono::milliseconds(1);
  while (!poll()) {
    const auto now = Clock::now();
    if (now >= deadline) return std::nullopt;
    std::this_thread::sleep_for(std::min<Clock::duration>(nap, deadline - now));
    nap = std::min(nap * 2, std::chrono::milliseconds(20));
  }
  return status_;
}

int Child::wait_or_kill(std::chrono::milliseconds timeout) {
  if (auto st = wait_for(timeout)) return *st;
  signal(SIGKILL);
  return wait_for(std::chrono::seconds(5)).value_or(-1);
}

void Child::signal(int sig) {
  if (pid_ > 0 && !ended()) kill(-pid_, sig);
}

}  // namespace onebit::proc
