// A shaped LAN on one machine: N worker network namespaces joined through a bridge by veth links
// whose both directions are rate-limited with tc, and the processes that run inside it.
#pragma once
#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "onebit/error.hpp"

namespace CLI {
class App;
}

namespace onebit::lan {

// --- link shape ------------------------------------------------------------------------------

// What the user asked for, as text (kept for reports) and as numbers (given to tc).
struct LinkShape {
  std::string rate_text;            // "1gbit"
  uint64_t rate_bits_per_s = 0;
  std::string delay_text = "0ms";   // one-way worker-to-worker latency added with netem
  uint64_t delay_us = 0;
};

// "1gbit", "100mbit", "2.5gbit", "800kbit", "1000000bit" (tc's bit units; bytes are not accepted,
// since tc reads a bare "100mb" as megabytes and that mix-up is the usual way to get 8x wrong).
uint64_t parse_rate(const std::string& text);
// "1ms", "500us", "0.2ms", "1s", "0".
uint64_t parse_delay(const std::string& text);
LinkShape make_shape(const std::string& rate, const std::string& delay);

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
// and tears the network down instead of the process dying with namespaces left behind.
class SignalGuard {
 public:
  SignalGuard();
  ~SignalGuard();
  SignalGuard(const SignalGuard&) = delete;
  SignalGuard& operator=(const SignalGuard&) = delete;
};
int pending_signal();               // 0 when none
void throw_if_interrupted();         // throws Interrupted

// --- processes ---------------------------------------------------------------------------------

struct ProcessSpec {
  std::vector<std::string> argv;    // argv[0] is looked up in PATH
  std::vector<std::string> env;     // "NAME=value", added to (or replacing in) this environment
  std::string netns;                // a namespace name under /var/run/netns; empty: this one
  bool capture = false;             // stdout/stderr into pipes (for prefixing), else inherited
  std::string label;                // for messages and prefixes, e.g. "rank 1"
  bool prefix_stdout = true;        // when captured: false passes stdout lines on as they are
};

// execve's argv / envp: pointers into `v` (which must outlive them), then a null.
std::vector<char*> c_strings(std::vector<std::string>& v);

// Runs a short tool (ip, tc) to completion and returns its output; throws onebit::Error naming
// `what` and the tool's own message when it fails or outlives `timeout`.
std::string run_tool(const std::vector<std::string>& argv, const std::string& what,
                     std::chrono::milliseconds timeout = std::chrono::seconds(10));

struct Outcome {
  std::vector<int> status;          // per process: exit code, or 128 + signal; -1 if not reaped
  bool timed_out = false;
  int interrupted_by = 0;           // signal number, 0 if none
  int exit_code = 0;                // what the command as a whole should return
};

// Starts every process (each in its own process group, killed if onebit dies) and waits for all,
// at most `timeout`. When one fails, the others are stopped (SIGTERM, then SIGKILL after a grace
// period); the same on timeout or a signal. Captured output is printed line by line with the
// label as prefix.
Outcome supervise(const std::vector<ProcessSpec>& specs, std::chrono::milliseconds timeout);

// --- the network -------------------------------------------------------------------------------

constexpr const char* kNamespacePrefix = "onebit-";
constexpr const char* kWorkerIfname = "eth0";

// Builds the network in the constructor and always removes it in the destructor (or teardown()):
// every process still inside one of its namespaces is killed, then the namespaces are deleted,
// which deletes their veths and the bridge. Addresses are only ever assigned inside them.
class Network {
 public:
  Network(int workers, const LinkShape& shape);
  ~Network();
  Network(const Network&) = delete;
  Network& operator=(const Network&) = delete;

  int workers() const { return workers_; }
  const LinkShape& shape() const { return shape_; }
  const std::string& tag() const { return tag_; }          // "onebit-<pid>-<n>"
  std::string worker_netns(int i) const;                     // "<tag>-w<i>"
  std::string switch_netns() const;                          // "<tag>-sw"
  std::string address(int i) const;                          // "10.213.0.<i+1>"
  std::string subnet() const;                                // "10.213.0.0/24"
  // "10.213.0.1=<tag>-w0,10.213.0.2=<tag>-w1,...": what `onebit lan-exec` reads from its environment.
  std::string host_map() const;

  void teardown() noexcept;

 private:
  void build();
  void shape_link(const std::string& netns, const std::string& dev, bool host_side);

  int workers_;
  LinkShape shape_;
  std::string tag_;
  std::vector<std::string> created_;  // namespaces that exist and must be deleted
};

// Deletes namespaces named "onebit-<pid>-..." whose creating process is gone (a run killed with
// SIGKILL, a crash), after killing whatever still runs inside them.
void remove_stale_namespaces() noexcept;

// Kills every process whose network namespace is `netns` and waits (bounded) until none is left.
void kill_processes_in(const std::string& netns) noexcept;

// Throws onebit::Error("<what> needs root (network namespaces)...") unless running as root.
void require_root(const std::string& what);

// --- running things inside it ------------------------------------------------------------------

// The environment one rank sees: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, ONEBIT_LAN_ADDR, ...
std::vector<std::string> rank_env(const Network& net, int rank, int master_port);

// The process specs that run `command` once per worker namespace, output prefixed "[rank i] "
// (stdout only when prefix_stdout).
std::vector<ProcessSpec> per_rank_specs(const Network& net, const std::vector<std::string>& command,
                                        int master_port, bool prefix_stdout = true);

// Builds the network, runs `command` once per worker namespace (rank_env: RANK, MASTER_ADDR, ...;
// output prefixed "[rank i] "), waits at most `timeout`, tears the network down and returns the
// command's exit status: 0, the first failing rank's, 124 on timeout, 128 + signal when interrupted.
// Needs root. This is `onebit lan`, and what the commands taking --rate run their ranks in; those
// pass prefix_stdout = false, so that what their rank 0 prints (a table, one JSON document) reaches
// stdout as it is, while the ranks' logs on stderr keep their "[rank i] ".
int run_in_network(int workers, const LinkShape& shape, const std::vector<std::string>& command,
                   std::chrono::milliseconds timeout, const std::string& what, int master_port = 29500,
                   bool prefix_stdout = true);

// The path of this executable, for commands that start themselves inside the network.
std::string self_path();

// Builds the network, runs `rank_argv` as one MPI rank per worker namespace over TCP (mpirun in
// worker 0's namespace, the others started through `onebit lan-exec`), waits at most `timeout`,
// tears the network down and returns mpirun's exit code. Needs root.
int run_mpi_in_network(int workers, const LinkShape& shape, const std::vector<std::string>& rank_argv,
                       std::chrono::milliseconds timeout, const std::string& what);

// --- the commands ------------------------------------------------------------------------------

struct LanOptions {
  int workers = 2;
  std::string rate;
  std::string delay = "0ms";
  double timeout_s = 3600;
  int master_port = 29500;
  std::vector<std::string> command;
};

CLI::App* add_lan_command(CLI::App& app, LanOptions& o);
int run_lan(const LanOptions& o);

// `onebit lan-exec HOST COMMAND...`: the remote shell mpirun uses inside the network (as ssh would:
// the command words are joined with spaces and run by /bin/sh in HOST's namespace).
CLI::App* add_lan_exec_command(CLI::App& app);
int run_lan_exec(const std::vector<std::string>& args);

}  // namespace onebit::lan
