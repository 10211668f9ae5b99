// Watching children to the end (see proc.hpp): a short tool's output collected, a group's output
// prefixed line by line, and the group stopped as one when a child fails, time runs out or a
// signal arrives.
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <iostream>
#include <string_view>
#include <thread>

#include "proc/proc.hpp"

namespace onebit::proc {
namespace {

using Clock = std::chrono::steady_clock;
constexpr auto kGiveUp = std::chrono::seconds(10);

// now + timeout, without overflowing for kNoTimeLimit.
Clock::time_point deadline_after(std::chrono::milliseconds timeout) {
  const auto now = Clock::now();
  return timeout >= std::chrono::duration_cast<std::chrono::milliseconds>(Clock::time_point::max() - now)
             ? Clock::time_point::max()
             : now + timeout;
}

bool any_open(const std::vector<Child>& children) {
  return std::any_of(children.begin(), children.end(), [](const Child& c) { return c.fds[0] >= 0 || c.fds[1] >= 0; });
}

// Prints the whole lines of stream s of child c (and, once the pipe is closed, what is left).
void print_lines(Child& c, int s, bool flush_partial) {
  std::ostream& os = s == 0 ? std::cout : std::cerr;
  const std::string prefix = s == 0 && !c.spec().prefix_stdout ? "" : "[" + c.spec().label + "] ";
  size_t start = 0;
  for (size_t nl; (nl = c.partial[s].find('\n', start)) != std::string::npos; start = nl + 1)
    os << prefix << std::string_view(c.partial[s]).substr(start, nl + 1 - start);
  c.partial[s].erase(0, start);
  if (flush_partial && c.fds[s] < 0 && !c.partial[s].empty()) {
    os << prefix << c.partial[s] << "\n";
    c.partial[s].clear();
  }
  os.flush();
}

// Reads what is available on every open pipe, waiting at most `wait` (less when a signal arrives),
// into the children's partial lines. Returns the (child, stream) pairs that were read.
std::vector<std::pair<size_t, int>> read_pipes(std::vector<Child>& children, std::chrono::milliseconds wait) {
  std::vector<pollfd> fds;
  std::vector<std::pair<size_t, int>> owner, read;
  for (size_t i = 0; i < children.size(); ++i)
    for (int s = 0; s < 2; ++s)
      if (children[i].fds[s] >= 0) {
        fds.push_back({children[i].fds[s], POLLIN, 0});
        owner.emplace_back(i, s);
      }
  if (fds.empty()) {
    if (wait.count() > 0) std::this_thread::sleep_for(std::min(wait, std::chrono::milliseconds(50)));
    return read;
  }
  if (::poll(fds.data(), fds.size(), static_cast<int>(wait.count())) < 0) return read;  // EINTR: caller looks
  char buf[65536];
  for (size_t k = 0; k < fds.size(); ++k) {
    if (!(fds[k].revents & (POLLIN | POLLHUP | POLLERR))) continue;
    auto [i, s] = owner[k];
    Child& c = children[i];
    const ssize_t n = ::read(c.fds[s], buf, sizeof buf);
    if (n <= 0) {
      ::close(c.fds[s]);
      c.fds[s] = -1;
    } else {
      c.partial[s].append(buf, static_cast<size_t>(n));
    }
    read.emplace_back(i, s);
  }
  return read;
}

// Reads and prints what the children wrote, waiting at most `wait`.
void pump(std::vector<Child>& children, std::chrono::milliseconds wait, bool flush_partial) {
  for (auto [i, s] : read_pipes(children, wait))
    print_lines(children[i], s, flush_partial || children[i].fds[s] < 0);
}

// The loop of supervise(): until every child is reaped, stopping the rest on the first failure,
// the time limit or a signal.
void watch(std::vector<Child>& children, const Supervision& s, Outcome& out) {
  const auto deadline = deadline_after(s.timeout);
  Clock::time_point kill_at{};  // when stopping: the moment SIGTERM turns into SIGKILL
  bool stopping = false, killed = false;
  auto signal_all = [&](int sig) {
    for (auto& c : children) c.signal(sig);
  };
  auto stop = [&] {
    if (stopping) return;
    stopping = true;
    signal_all(SIGTERM);
    kill_at = Clock::now() + s.grace;
  };
  for (;;) {
    bool all_ended = true;  // every child polled (no short cut: a later one may be the one that failed)
    for (auto& c : children) all_ended = c.poll() && all_ended;
    // The first failure is noted even when the last children ended together.
    for (size_t i = 0; i < children.size() && out.failed < 0; ++i) {
      const Child& c = children[i];
      if (c.ended() && c.status() != 0) {
        out.failed = static_cast<int>(i);
        out.failure = c.spec().label + " (pid " + std::to_string(c.pid()) + ") " + exit_text(c.status());
        out.exit_code = exit_code(c.status());
        stop();
      }
    }
    if (all_ended) return;
    pump(children, std::chrono::milliseconds(50), false);
    if (!out.interrupted_by && pending_signal()) {
      out.interrupted_by = pending_signal();
      stop();
    }
    if (!out.timed_out && !stopping && Clock::now() > deadline) {
      out.timed_out = true;
      stop();
    }
    if (stopping && !killed && Clock::now() > kill_at) {
      killed = true;
      signal_all(SIGKILL);
    }
    // A child that outlives SIGKILL this long is stuck in the kernel: left, not waited for.
    if (killed && Clock::now() > kill_at + kGiveUp) return;
  }
}

}  // namespace

std::string run_tool(const std::vector<std::string>& argv, const std::string& what, std::chrono::milliseconds timeout) {
  Spec spec;
  spec.argv = argv;
  spec.env = {"LC_ALL=C"};  // messages in English, for the callers that look for one
  spec.capture = true;
  spec.label = argv.empty() ? "" : argv[0];
  spec.what = what;
  std::vector<Child> one;
  one.emplace_back(spec);
  Child& tool = one.front();
  const auto deadline = deadline_after(timeout);
  auto give_up = [&] {
    tool.wait_or_kill(std::chrono::milliseconds(0));
    throw Error(what + ": `" + argv[0] + "` did not finish within " + std::to_string(timeout.count()) +
                " ms; killed it");
  };
  std::string output;  // stdout and stderr in the order they were read
  while (tool.fds[0] >= 0 || tool.fds[1] >= 0) {
    read_pipes(one, std::chrono::milliseconds(20));
    for (auto& text : tool.partial) {
      output += text;
      text.clear();
    }
    if (Clock::now() > deadline) give_up();
  }
  // Both pipes closed: the tool has ended, or is about to (waited for in short naps: a tool is
  // run dozens of times to build one network).
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
  if (!tool.wait_for(std::max(left, std::chrono::milliseconds(0)))) give_up();
  if (tool.status() != 0) {
    while (!output.empty() && (output.back() == '\n' || output.back() == ' ')) output.pop_back();
    std::string cmd;
    for (const auto& a : argv) cmd += (cmd.empty() ? "" : " ") + a;
    throw Error(what + ": `" + cmd + "` failed (exit " + std::to_string(exit_code(tool.status())) + "): " + output);
  }
  return output;
}

Outcome supervise(const std::vector<Spec>& specs, const Supervision& s) {
  SignalGuard guard;
  std::vector<Child> children;  // a start that throws drops (kills and reaps) those already started
  children.reserve(specs.size());
  for (const auto& spec : specs) children.emplace_back(spec);
  if (s.on_started) {
    std::vector<pid_t> pids;
    for (const auto& c : children) pids.push_back(c.pid());
    s.on_started(pids);
  }
  Outcome out;
  watch(children, s, out);
  // Output a grandchild still holds open is drained for a moment, then dropped: whoever holds it
  // is about to be stopped with its namespace, or is no child of ours to wait for.
  const auto drain_until = Clock::now() + std::chrono::seconds(1);
  while (any_open(children) && Clock::now() < drain_until) pump(children, std::chrono::milliseconds(50), true);
  for (auto& c : children) {
    c.close_fds();
    out.status.push_back(c.ended() ? c.status() : -1);
  }
  if (out.interrupted_by) out.exit_code = 128 + out.interrupted_by;
  else if (out.timed_out) out.exit_code = 124;  // as timeout(1)
  else if (out.failed >= 0 && (out.exit_code <= 0 || out.exit_code > 255)) out.exit_code = 1;
  return out;
}

}  // namespace onebit::proc
