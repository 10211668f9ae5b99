// Child processes for every command that starts others: `onebit train`'s workers, the ranks of the
// shaped network (lan/), the benchmarks' relaunch under mpirun, short tools (ip, tc, python). One
// fork+exec path with one set of rules: each child in its own process group, killed if onebit dies,
// stopped with SIGTERM and then SIGKILL; every wait has a limit, so nothing hangs on a stuck child.
#pragma once
#include <sys/types.h>

#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "onebit/error.hpp"

namespace onebit::proc {

// --- texts -------------------------------------------------------------------------------------

// A wait status as people read it: "exited with status 3", "killed by signal 9 (SIGKILL)".
std::string exit_text(int wait_status);
// A wait status as a shell reports it: the exit status, or 128 + signal.
int exit_code(int wait_status);
// Bytes in powers of 1000, as network rates are counted: "512 B", "1.50 MB".
std::string human_bytes(double bytes);
// The path of this executable (/proc/self/exe), for commands that start themselves again; mpirun
// and its daemons would resolve /proc/self/exe to themselves, so they are given this path instead.
std::string self_path();
// The executable `name` would run as, looked up in PATH; empty when there is none.
std::string find_in_path(const std::string& name);

// --- signals -----------------------------------------------------------------------------------

// Thrown when SIGINT/SIGTERM/SIGHUP arrived while a SignalGuard was installed; the command's exit
// status is then 128 + signal, as a shell reports a killed process.
class Interrupted : public Error {
 public:
  explicit Interrupted(int sig);
  int signal() const { return signal_; }

 private:
  int signal_;
};

// While alive, SIGINT/SIGTERM/SIGHUP only record the signal, so that whoever is waiting notices it
// and stops its children (and tears down what it built) instead of dying with them left running.
// Guards nest (the outermost one installs and restores the handlers); main thread only.
class SignalGuard {
 public:
  SignalGuard();
  ~SignalGuard();
  SignalGuard(const SignalGuard&) = delete;
  SignalGuard& operator=(const SignalGuard&) = delete;
};
int pending_signal();        // 0 when none
void throw_if_interrupted();  // throws Interrupted

// --- one child ---------------------------------------------------------------------------------

struct Spec {
  std::vector<std::string> argv;    // argv[0]: a path, or a name looked up in PATH
  std::vector<std::string> env;     // "NAME=value", added to (or replacing in) this environment
  std::string netns;                // a network namespace file to enter (/var/run/netns/X); empty: this one
  bool capture = false;             // stdout/stderr into pipes (for prefixing or collecting), else inherited
  std::string label;                // for messages and prefixes, e.g. "rank 1"
  bool prefix_stdout = true;        // when captured and supervised: false passes stdout lines on as they are
  std::vector<std::string> unset;   // names removed from this environment (a parent job's RANK, ...)
  std::string what = "onebit";      // the command that starts it, first in its messages: "lan", "train"
};

// A started child: its own process group, SIGKILLed by the kernel if this process dies. Dropped
// while still running, it is killed and reaped (bounded) with its group.
class Child {
 public:
  // fork+exec. Throws onebit::Error ("<what>: <label>: ...") when it cannot start; a program that
  // cannot be run ends the child with status 127 (126: the namespace), after a line on its stderr.
  explicit Child(const Spec& spec);
  ~Child();
  Child(Child&& other) noexcept;
  Child& operator=(Child&&) = delete;
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  pid_t pid() const { return pid_; }
  const Spec& spec() const { return spec_; }
  bool poll();                     // reaps without blocking; true once it has ended
  bool ended() const { return status_.has_value(); }
  int status() const { return *status_; }  // the wait status; only once ended()
  // Waits at most `timeout`: the wait status, or nothing when it is still running.
  std::optional<int> wait_for(std::chrono::milliseconds timeout);
  // Waits at most `timeout`, then SIGKILLs its group and reaps it: the wait status (-1 if even
  // SIGKILL did not end it within a few seconds, as in uninterruptible sleep).
  int wait_or_kill(std::chrono::milliseconds timeout);
  void signal(int sig);            // its whole process group, while it runs

  // Captured output: the read ends (-1 once closed or when not captured) and what is not yet a line.
  int fds[2] = {-1, -1};
  std::string partial[2];
  void close_fds();

 private:
  Spec spec_;
  pid_t pid_ = -1;
  std::optional<int> status_;
};

// Runs a short tool (ip, tc, a script) to completion and returns its output (stdout and stderr);
// throws onebit::Error naming `what` and the tool's own message when it fails or outlives `timeout`.
std::string run_tool(const std::vector<std::string>& argv, const std::string& what,
                     std::chrono::milliseconds timeout = std::chrono::seconds(10));

// --- a group of children -----------------------------------------------------------------------

// No limit on the whole run: for children that bound themselves (the trainer's workers, whose
// every collective has a timeout); supervise still reacts to failures and signals at once.
constexpr std::chrono::milliseconds kNoTimeLimit = std::chrono::milliseconds::max();

struct Supervision {
  std::chrono::milliseconds timeout = kNoTimeLimit;           // then every child is stopped
  std::chrono::milliseconds grace = std::chrono::seconds(3);  // from SIGTERM to SIGKILL
  // Called once all have started (e.g. to write their pids for tools and tests).
  std::function<void(const std::vector<pid_t>&)> on_started;
};

struct Outcome {
  std::vector<int> status;   // per child: its wait status; -1 if not reaped
  bool timed_out = false;
  int interrupted_by = 0;    // signal number, 0 if none
  int failed = -1;           // the first child that failed (its index in the specs), -1 if none
  std::string failure;       // the same in words: "worker rank 1 (pid 4242) exited with status 3"
  int exit_code = 0;         // 0, the first failure's exit code, 124 on time-out, 128 + signal
  bool ok() const { return exit_code == 0; }
};

// Starts every child and waits for all (installing a SignalGuard meanwhile). When one fails, the
// others are stopped (SIGTERM to each group, SIGKILL after the grace period); the same on time-out
// or a signal. Captured output is printed line by line with "[label] " in front.
Outcome supervise(const std::vector<Spec>& specs, const Supervision& s);

// --- the ranks of a job on this machine --------------------------------------------------------

struct RankLaunch {
  std::vector<std::string> args;  // the command line after this executable ("train", ...)
  int workers = 2;
  bool mpi = false;               // one mpirun starts them; else RANK/WORLD_SIZE/MASTER_* on loopback
  std::string pid_file;           // "rank pid" per line, for tools and tests; empty: none
  Supervision supervision;
  std::string what;               // the command, for messages: "train", "bench allreduce"
};

// Starts this executable once per rank (or under `mpirun -np workers`) and supervises them; each
// sees RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR=127.0.0.1 and a free MASTER_PORT
// instead of any it inherited. Throws onebit::Error only when they cannot be started (mpirun is not
// on PATH, fork fails).
Outcome launch_ranks(const RankLaunch& l);

// A free TCP port on 127.0.0.1 for a local rendezvous.
int free_loopback_port();

}  // namespace onebit::proc
