// The shaped network of `onebit lan`: namespaces, bridge, veth pairs and tc qdiscs, built with
// iproute2, and removed on every exit path (also the leftovers of runs that were SIGKILLed).
#include <dirent.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <iostream>
#include <thread>

#include "lan/lan.hpp"

namespace onebit::lan {
namespace {

constexpr const char* kNetnsDir = "/var/run/netns";
constexpr const char* kSubnetPrefix = "10.213.0.";
constexpr int kMaxWorkers = 253;  // 10.213.0.1 .. 10.213.0.253 in one /24

// Splits "2.5gbit" into 2.5 and "gbit"; throws when there is no number.
std::pair<double, std::string> number_and_unit(const std::string& text, const std::string& what) {
  size_t i = 0;
  while (i < text.size() && (std::isdigit(static_cast<unsigned char>(text[i])) || text[i] == '.')) ++i;
  if (i == 0) throw Error(what + " '" + text + "': expected a number followed by a unit");
  double v = 0;
  try {
    size_t used = 0;
    v = std::stod(text.substr(0, i), &used);
    if (used != i) throw std::invalid_argument("trailing");
  } catch (const std::exception&) {
    throw Error(what + " '" + text + "': '" + text.substr(0, i) + "' is not a number");
  }
  std::string unit = text.substr(i);
  for (char& c : unit) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return {v, unit};
}

std::string tc_size(uint64_t bytes) { return std::to_string(bytes) + "b"; }

struct stat stat_or_zero(const std::string& path) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) st = {};
  return st;
}

std::vector<std::string> list_namespaces() {
  std::vector<std::string> out;
  DIR* d = opendir(kNetnsDir);
  if (!d) return out;
  while (dirent* e = readdir(d)) {
    const std::string name = e->d_name;
    if (name.rfind(kNamespacePrefix, 0) == 0) out.push_back(name);
  }
  closedir(d);
  return out;
}

void delete_namespace(const std::string& netns) noexcept {
  if (stat_or_zero(std::string(kNetnsDir) + "/" + netns).st_ino == 0) return;  // never made, or gone
  kill_processes_in(netns);
  try {
    proc::run_tool({"ip", "netns", "delete", netns}, "lan: teardown");
  } catch (const std::exception& e) {
    std::cerr << "onebit: " << e.what() << "\n";
  }
}

std::atomic<int> g_networks{0};  // per-process counter, so one process may hold several networks

}  // namespace

uint64_t parse_rate(const std::string& text) {
  const auto [v, unit] = number_and_unit(text, "--rate");
  double scale = 0;
  if (unit == "bit") scale = 1;
  else if (unit == "kbit") scale = 1e3;
  else if (unit == "mbit") scale = 1e6;
  else if (unit == "gbit") scale = 1e9;
  else
    throw Error("--rate '" + text + "': unit must be bit, kbit, mbit or gbit (bits per second, as tc writes them)");
  const double bps = v * scale;
  if (!(bps >= 8000) || bps > 1e12) throw Error("--rate '" + text + "': must be between 8kbit and 1000gbit");
  return static_cast<uint64_t>(std::llround(bps));
}

uint64_t parse_delay(const std::string& text) {
  if (text == "0") return 0;
  const auto [v, unit] = number_and_unit(text, "--delay");
  double scale = 0;
  if (unit == "us") scale = 1;
  else if (unit == "ms") scale = 1e3;
  else if (unit == "s") scale = 1e6;
  else throw Error("--delay '" + text + "': unit must be us, ms or s");
  const double us = v * scale;
  if (us > 10e6) throw Error("--delay '" + text + "': more than 10 s");
  return static_cast<uint64_t>(std::llround(us));
}

LinkShape make_shape(const std::string& rate, const std::string& delay) {
  LinkShape s;
  s.rate_text = rate;
  s.rate_bits_per_s = parse_rate(rate);
  s.delay_text = delay.empty() ? "0ms" : delay;
  s.delay_us = parse_delay(s.delay_text);
  return s;
}

void require_root(const std::string& what) {
  if (geteuid() != 0)
    throw Error(what + " needs root (network namespaces): run it as root, for example with sudo");
}

void kill_processes_in(const std::string& netns) noexcept {
  const struct stat target = stat_or_zero(std::string(kNetnsDir) + "/" + netns);
  if (target.st_ino == 0) return;
  // Killed processes may have forked just before; look again until the namespace is empty.
  for (int round = 0; round < 60; ++round) {
    int found = 0;
    if (DIR* d = opendir("/proc")) {
      while (dirent* e = readdir(d)) {
        if (!std::isdigit(static_cast<unsigned char>(e->d_name[0]))) continue;
        const struct stat st = stat_or_zero(std::string("/proc/") + e->d_name + "/ns/net");
        if (st.st_ino == target.st_ino && st.st_dev == target.st_dev) {
          kill(static_cast<pid_t>(std::atoi(e->d_name)), SIGKILL);
          ++found;
        }
      }
      closedir(d);
    }
    if (found == 0) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  std::cerr << "onebit: lan: teardown: processes still alive in namespace " << netns << " after SIGKILL\n";
}

void remove_stale_namespaces() noexcept {
  for (const auto& name : list_namespaces()) {
    // "onebit-<pid>-<n>-...": stale when <pid> no longer exists.
    const std::string rest = name.substr(std::string(kNamespacePrefix).size());
    const size_t dash = rest.find('-');
    if (dash == 0 || dash == std::string::npos) continue;
    bool digits = true;
    for (size_t i = 0; i < dash; ++i) digits = digits && std::isdigit(static_cast<unsigned char>(rest[i]));
    if (!digits) continue;
    const pid_t pid = static_cast<pid_t>(std::atol(rest.substr(0, dash).c_str()));
    if (pid == getpid() || kill(pid, 0) == 0 || errno == EPERM) continue;
    std::cerr << "onebit: lan: removing namespace " << name << " left behind by process " << pid << "\n";
    delete_namespace(name);
  }
}

Network::Network(int workers, const LinkShape& shape) : workers_(workers), shape_(shape) {
  if (workers < 1 || workers > kMaxWorkers)
    throw Error("lan: --workers " + std::to_string(workers) + ": must be between 1 and " + std::to_string(kMaxWorkers));
  require_root("lan");
  remove_stale_namespaces();
  tag_ = std::string(kNamespacePrefix) + std::to_string(getpid()) + "-" + std::to_string(g_networks++);
  try {
    build();
  } catch (...) {
    teardown();
    throw;
  }
}

Network::~Network() { teardown(); }

std::string Network::worker_netns(int i) const { return tag_ + "-w" + std::to_string(i); }
std::string Network::switch_netns() const { return tag_ + "-sw"; }
std::string Network::address(int i) const { return kSubnetPrefix + std::to_string(i + 1); }
std::string Network::subnet() const { return std::string(kSubnetPrefix) + "0/24"; }

std::string Network::host_map() const {
  std::string m;
  for (int i = 0; i < workers_; ++i) {
    if (i) m += ',';
    m += address(i);
    m += '=';
    m += worker_netns(i);
  }
  return m;
}

void Network::build() {
  const std::string sw = switch_netns();
  auto add_netns = [&](const std::string& name) {
    proc::throw_if_interrupted();
    created_.push_back(name);  // before the call: a half-made namespace is deleted too
    proc::run_tool({"ip", "netns", "add", name}, "lan: creating namespace " + name);
  };
  add_netns(sw);
  proc::run_tool({"ip", "-n", sw, "link", "add", "br0", "type", "bridge"}, "lan: creating the bridge");
  proc::run_tool({"ip", "-n", sw, "link", "set", "br0", "up"}, "lan: bringing the bridge up");
  for (int i = 0; i < workers_; ++i) {
    const std::string w = worker_netns(i), port = std::string("s").append(std::to_string(i));
    const std::string what = "lan: link of worker " + std::to_string(i);
    add_netns(w);
    // Both ends are created straight inside the namespaces: nothing ever appears in this one.
    proc::run_tool({"ip", "-n", sw, "link", "add", port, "type", "veth", "peer", "name", kWorkerIfname, "netns", w},
                   what);
    proc::run_tool({"ip", "-n", sw, "link", "set", port, "master", "br0", "up"}, what);
    proc::run_tool({"ip", "-n", w, "addr", "add", address(i) + "/24", "dev", kWorkerIfname}, what);
    proc::run_tool({"ip", "-n", w, "link", "set", kWorkerIfname, "up"}, what);
    proc::run_tool({"ip", "-n", w, "link", "set", "lo", "up"}, what);
    // Worker -> switch (host side, with the delay) and switch -> worker: both directions limited.
    shape_link(w, kWorkerIfname, true);
    shape_link(sw, port, false);
  }
  proc::throw_if_interrupted();
}

// tbf at the link rate. burst: at least a 64 KiB GSO packet plus headers (smaller bursts make tbf
// split every such packet, costing CPU at 1gbit) and 2 ms of traffic, so the token bucket is not
// starved by timer granularity at high rates; throughput reaches the rate (TCP goodput ~96%, as
// on real Ethernet), verified by the lan_throughput test.
// Queue, host side (the worker's own egress, where its NIC queue would be): 100 ms at the rate,
// at least 2 MB. A shorter one drops the worker's own packets when it sends to several peers at
// once (an all-to-all), which a real host's NIC queue and TCP's small-queue backpressure do not;
// measured: a 4-worker all-to-all at 100mbit took 0.37 s (median; ~200 local drops per worker)
// with a 20 ms host queue and 0.22 s with 2 MB, against a 0.195 s floor.
// Queue, switch side: 20 ms at the rate, a commodity switch port's order of magnitude, so senders
// converging on one receiver queue and then drop as on a real switch.
void Network::shape_link(const std::string& netns, const std::string& dev, bool host_side) {
  const std::string what = "lan: shaping " + dev + " in " + netns;
  const uint64_t bytes_per_s = shape_.rate_bits_per_s / 8;
  const uint64_t burst = std::max<uint64_t>(128 * 1024, bytes_per_s / 500);
  const uint64_t limit = host_side ? std::max<uint64_t>(2000000, bytes_per_s / 10) + burst : bytes_per_s / 50 + burst;
  proc::run_tool({"tc", "-n", netns, "qdisc", "add", "dev", dev, "root", "handle", "1:", "tbf", "rate",
                  std::to_string(shape_.rate_bits_per_s) + "bit", "burst", tc_size(burst), "limit", tc_size(limit)},
                 what);
  if (host_side && shape_.delay_us > 0) {
    // netem below tbf holds each packet for the delay; its queue (in packets) must hold a delay's
    // worth of traffic at the rate plus tbf's own queue, or it drops what tbf would have sent.
    const uint64_t in_flight = bytes_per_s * shape_.delay_us / 1000000 + limit;
    const uint64_t packets = std::max<uint64_t>(1000, in_flight / 500);
    try {
      proc::run_tool({"tc", "-n", netns, "qdisc", "add", "dev", dev, "parent", "1:1", "handle", "10:", "netem",
                      "delay", std::to_string(shape_.delay_us) + "us", "limit", std::to_string(packets)},
                     what);
    } catch (const Error& e) {
      if (std::string(e.what()).find("kind is unknown") == std::string::npos) throw;
      throw Error("lan: --delay needs the kernel's netem qdisc (CONFIG_NET_SCH_NETEM, module sch_netem), which "
                  "this kernel does not have; run without --delay");
    }
  }
}

void Network::teardown() noexcept {
  // Workers first: their processes go before the switch they talk through.
  for (auto it = created_.rbegin(); it != created_.rend(); ++it) delete_namespace(*it);
  created_.clear();
}

}  // namespace onebit::lan
