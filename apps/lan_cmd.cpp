// `onebit lan`, `onebit lan-exec` and the MPI launch inside a shaped network (see lan_cmd.hpp).
#include <fcntl.h>
#include <sched.h>
#include <stdlib.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>

#include "lan_cmd.hpp"
#include "proc/proc.hpp"

namespace onebit::lan {
namespace {

std::chrono::milliseconds to_ms(double seconds) {
  return std::chrono::milliseconds(static_cast<int64_t>(std::llround(seconds * 1000.0)));
}

// A private directory under /tmp for the hostfile, removed with everything in it.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "onebit-lan-XXXXXX").string();
    if (!mkdtemp(tmpl.data())) throw Error("lan: cannot create a temporary directory: " + std::string(std::strerror(errno)));
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

}  // namespace

int run_mpi_in_network(int workers, const LinkShape& shape, const std::vector<std::string>& rank_argv,
                       std::chrono::milliseconds timeout, const std::string& what) {
  require_root(what);
  proc::SignalGuard guard;  // a signal while the network is built tears it down too
  try {
    Network net(workers, shape);
    TempDir dir;
    const std::filesystem::path hostfile = dir.path() / "hostfile";
    {
      std::ofstream f(hostfile);
      for (int i = 0; i < workers; ++i) f << net.address(i) << " slots=1\n";
      if (!f) throw Error(what + ": cannot write " + hostfile.string());
    }
    const std::string self = proc::self_path();
    if (self.find_first_of(" \t") != std::string::npos)
      throw Error(what + ": the path of onebit (" + self + ") contains a space, which mpirun's plm_rsh_agent cannot take");
    std::vector<std::string> argv = {
        "mpirun", "--allow-run-as-root", "--bind-to", "none", "-np", std::to_string(workers),
        "--hostfile", hostfile.string(),
        // Every "host" is a namespace on this machine: onebit lan-exec enters it as ssh would log in.
        "--mca", "plm_rsh_agent", self + " lan-exec", "--mca", "plm_rsh_no_tree_spawn", "1",
        // TCP over the shaped links only: no shared memory (vader), no UCX, no loopback shortcut.
        "--mca", "pml", "ob1", "--mca", "btl", "tcp,self",
        "--mca", "btl_tcp_if_include", net.subnet(), "--mca", "oob_tcp_if_include", net.subnet(),
        self};
    argv.insert(argv.end(), rank_argv.begin(), rank_argv.end());
    std::vector<std::string> env = {"ONEBIT_LAN_HOSTS=" + net.host_map(), "OMPI_ALLOW_RUN_AS_ROOT=1",
                                    "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1",
                                    "ONEBIT_LAN_RATE=" + shape.rate_text, "ONEBIT_LAN_DELAY=" + shape.delay_text};
    std::cerr << "onebit: " << what << ": " << describe_network(net) << ", one MPI rank per namespace over TCP\n";
    proc::Spec mpirun;
    mpirun.argv = argv;
    mpirun.env = env;
    mpirun.netns = netns_path(net.worker_netns(0));
    mpirun.label = "mpirun";
    mpirun.what = "lan";
    return supervise_in_network({mpirun}, timeout);
  } catch (const proc::Interrupted& e) {
    std::cerr << "onebit: " << what << ": " << e.what() << "; the network was torn down\n";
    return 128 + e.signal();
  }
}

// --- onebit lan --------------------------------------------------------------------------------

CLI::App* add_lan_command(CLI::App& app, LanOptions& o) {
  CLI::App* c = app.add_subcommand(
      "lan", "run COMMAND once per worker in a shaped network of namespaces (root): onebit lan --workers 4 "
             "--rate 1gbit -- COMMAND...");
  c->add_option("--workers", o.workers, "worker namespaces, one process each")->check(CLI::Range(1, 253))->capture_default_str();
  c->add_option("--rate", o.rate, "each worker's link rate, both directions (tc units: 100mbit, 1gbit)")->required();
  c->add_option("--delay", o.delay, "one-way latency between two workers (netem: 500us, 1ms)")->capture_default_str();
  c->add_option("--timeout", o.timeout_s, "seconds before every process is killed")
      ->check([](const std::string& s) -> std::string {
        char* end = nullptr;
        const double v = std::strtod(s.c_str(), &end);
        return !s.empty() && *end == '\0' && v >= 0.1 && v <= 1e7 ? "" : "must be a number from 0.1 to 1e+07, not '" + s + "'";
      }, "SECONDS")
      ->capture_default_str();
  c->add_option("--master-port", o.master_port, "MASTER_PORT given to the ranks")->check(CLI::Range(1, 65535))->capture_default_str();
  c->add_option("command", o.command, "the command (after --); sees RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, "
                                      "ONEBIT_LAN_ADDR")
      ->required();
  c->footer(
      "Each worker i lives in namespace onebit-<pid>-<n>-w<i> with address 10.213.0.<i+1>/24 on eth0, linked to a "
      "bridge in a switch namespace. Output lines are prefixed [rank i]. Exit status: 0 if every rank succeeded, "
      "else the first failing rank's status (the others are stopped), 124 on --timeout, 130 on Ctrl-C. The "
      "network is removed on every exit.\n\nExample:\n  onebit lan --workers 2 --rate 100mbit -- sh -c 'echo rank $RANK of "
      "$WORLD_SIZE at $ONEBIT_LAN_ADDR'");
  return c;
}

int run_lan(const LanOptions& o) {
  require_root("lan");
  return run_in_network(o.workers, make_shape(o.rate, o.delay), o.command, to_ms(o.timeout_s), "lan", o.master_port);
}

// --- onebit lan-exec ---------------------------------------------------------------------------

CLI::App* add_lan_exec_command(CLI::App& app) {
  CLI::App* c = app.add_subcommand("lan-exec", "mpirun's remote shell inside an onebit network (internal)");
  c->group("");  // not listed in --help: only mpirun runs it
  c->prefix_command();
  return c;
}

int run_lan_exec(const std::vector<std::string>& args) {
  if (args.size() < 2) throw Error("lan-exec: usage: onebit lan-exec HOST COMMAND...");
  const std::string& host = args[0];
  const char* map = std::getenv("ONEBIT_LAN_HOSTS");
  if (!map)
    throw Error("lan-exec: ONEBIT_LAN_HOSTS is not set (lan-exec is the remote shell that onebit gives mpirun "
                "inside its network, not a command to run by hand)");
  std::string netns;
  std::stringstream entries(map);
  for (std::string e; std::getline(entries, e, ',');) {
    const size_t eq = e.find('=');
    if (eq != std::string::npos && e.substr(0, eq) == host) netns = e.substr(eq + 1);
  }
  if (netns.empty()) throw Error("lan-exec: host '" + host + "' is not a worker of this network (" + map + ")");
  if (netns.rfind(kNamespacePrefix, 0) != 0 || netns.find('/') != std::string::npos)
    throw Error("lan-exec: '" + netns + "' is not a namespace onebit made");
  // As ssh does: the words are joined with spaces and the remote shell parses them.
  std::string command;
  for (size_t i = 1; i < args.size(); ++i) command += (i > 1 ? " " : "") + args[i];

  const std::string path = "/var/run/netns/" + netns;
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error("lan-exec: cannot open " + path + ": " + std::strerror(errno));
  if (setns(fd, CLONE_NEWNET) != 0) throw Error("lan-exec: cannot enter " + netns + ": " + std::strerror(errno));
  close(fd);
  execl("/bin/sh", "sh", "-c", command.c_str(), static_cast<char*>(nullptr));
  throw Error("lan-exec: cannot run /bin/sh: " + std::string(std::strerror(errno)));
}

}  // namespace onebit::lan
