// Running a command once per worker inside a freshly built shaped network (see lan.hpp): the
// ranks' environment, their supervision (proc/), and the network torn down on every way out.
#include <iostream>

#include "lan/lan.hpp"

namespace onebit::lan {
namespace {

std::string describe(const LinkShape& s, int workers) {
  std::string d = std::to_string(workers) + " workers, each link " + s.rate_text + " both ways";
  if (s.delay_us > 0) d += ", " + s.delay_text + " one-way delay";
  return d;
}

// What the user reads about a run that did not end well (the ranks' own messages came before).
void report(const std::vector<proc::Spec>& specs, const proc::Outcome& out, std::chrono::milliseconds timeout) {
  if (out.interrupted_by) {
    std::cerr << "onebit: lan: " << proc::Interrupted(out.interrupted_by).what()
              << "; stopped every process, tearing the network down\n";
  } else if (out.timed_out) {
    std::cerr << "onebit: lan: still running after the time limit of " << timeout.count() / 1000.0
              << " s; stopped every process\n";
  } else if (out.failed >= 0) {
    std::cerr << "onebit: lan: " << specs[static_cast<size_t>(out.failed)].label << " "
              << proc::exit_text(out.status[static_cast<size_t>(out.failed)]) << "; stopped the others\n";
  }
}

}  // namespace

std::string describe_network(const Network& net) {
  return describe(net.shape(), net.workers()) + " (namespaces " + net.tag() + "-*)";
}

std::vector<std::string> rank_env(const Network& net, int rank, int master_port) {
  return {
      "RANK=" + std::to_string(rank),
      "WORLD_SIZE=" + std::to_string(net.workers()),
      "LOCAL_RANK=0",  // one worker per "machine"
      "LOCAL_WORLD_SIZE=1",
      "MASTER_ADDR=" + net.address(0),
      "MASTER_PORT=" + std::to_string(master_port),
      "ONEBIT_LAN_ADDR=" + net.address(rank),
      "ONEBIT_LAN_NETNS=" + net.worker_netns(rank),
      "ONEBIT_LAN_IFNAME=" + std::string(kWorkerIfname),
      "ONEBIT_LAN_RATE=" + net.shape().rate_text,
      "ONEBIT_LAN_DELAY=" + net.shape().delay_text,
      // Gloo picks its interface from the hostname, which resolves outside the namespace.
      "GLOO_SOCKET_IFNAME=" + std::string(kWorkerIfname),
  };
}

std::string netns_path(const std::string& netns) { return "/var/run/netns/" + netns; }

std::vector<proc::Spec> per_rank_specs(const Network& net, const std::vector<std::string>& command, int master_port,
                                       bool prefix_stdout) {
  std::vector<proc::Spec> specs;
  for (int r = 0; r < net.workers(); ++r) {
    proc::Spec s;
    s.argv = command;
    s.env = rank_env(net, r, master_port);
    s.netns = netns_path(net.worker_netns(r));
    s.capture = true;
    s.label = "rank " + std::to_string(r);
    s.prefix_stdout = prefix_stdout;
    s.what = "lan";
    specs.push_back(std::move(s));
  }
  return specs;
}

int supervise_in_network(const std::vector<proc::Spec>& specs, std::chrono::milliseconds timeout) {
  proc::Supervision s;
  s.timeout = timeout;
  s.grace = std::chrono::seconds(3);
  const proc::Outcome out = proc::supervise(specs, s);
  report(specs, out, timeout);
  return out.exit_code;
}

int run_in_network(int workers, const LinkShape& shape, const std::vector<std::string>& command,
                   std::chrono::milliseconds timeout, const std::string& what, int master_port, bool prefix_stdout) {
  require_root(what);
  proc::SignalGuard guard;  // a signal while the network is built tears it down too
  try {
    Network net(workers, shape);
    std::cerr << "onebit: " << what << ": " << describe_network(net) << "\n";
    return supervise_in_network(per_rank_specs(net, command, master_port, prefix_stdout), timeout);
  } catch (const proc::Interrupted& e) {
    std::cerr << "onebit: " << what << ": " << e.what() << "; the network was torn down\n";
    return 128 + e.signal();
  }
}

}  // namespace onebit::lan
