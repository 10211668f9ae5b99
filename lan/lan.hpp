// A shaped LAN on one machine: N worker network namespaces joined through a bridge by veth links
// whose both directions are rate-limited with tc, and the processes that run inside it. Below the
// commands that use it: `onebit lan` and `bench allreduce --rate` (apps/), `compare --rate` (train/).
#pragma once
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "onebit/error.hpp"
#include "proc/proc.hpp"

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

// "2 workers, each link 1gbit both ways, 1ms one-way delay (namespaces onebit-<pid>-<n>-*)".
std::string describe_network(const Network& net);

// The file a process enters to join namespace `netns` (proc::Spec::netns).
std::string netns_path(const std::string& netns);

// The environment one rank sees: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, ONEBIT_LAN_ADDR, ...
std::vector<std::string> rank_env(const Network& net, int rank, int master_port);

// The process specs that run `command` once per worker namespace, output prefixed "[rank i] "
// (stdout only when prefix_stdout).
std::vector<proc::Spec> per_rank_specs(const Network& net, const std::vector<std::string>& command,
                                       int master_port, bool prefix_stdout = true);

// Supervises `specs` (proc::supervise: one failing stops the others, SIGTERM then SIGKILL after 3 s),
// says on stderr why a run ended early, and returns its exit status: 0, the first failing process's,
// 124 past `timeout`, 128 + signal when interrupted.
int supervise_in_network(const std::vector<proc::Spec>& specs, std::chrono::milliseconds timeout);

// Builds the network, runs `command` once per worker namespace (rank_env: RANK, MASTER_ADDR, ...;
// output prefixed "[rank i] "), waits at most `timeout`, tears the network down and returns the
// command's exit status: 0, the first failing rank's, 124 on timeout, 128 + signal when interrupted.
// Needs root. This is `onebit lan`, and what the commands taking --rate run their ranks in; those
// pass prefix_stdout = false, so that what their rank 0 prints (a table, one JSON document) reaches
// stdout as it is, while the ranks' logs on stderr keep their "[rank i] ".
int run_in_network(int workers, const LinkShape& shape, const std::vector<std::string>& command,
                   std::chrono::milliseconds timeout, const std::string& what, int master_port = 29500,
                   bool prefix_stdout = true);

}  // namespace onebit::lan
