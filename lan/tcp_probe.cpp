// Test helper run under `onebit lan --workers 2`: measures TCP throughput both ways between the two
// namespaces and the round-trip time, and fails when they do not match the shaped link.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "lan_tcp_probe: %s: %s\n", what.c_str(), std::strerror(errno));
  std::exit(2);
}

std::string env(const char* name) {
  const char* v = std::getenv(name);
  if (!v) {
    std::fprintf(stderr, "lan_tcp_probe: %s is not set (run me under onebit lan)\n", name);
    std::exit(2);
  }
  return v;
}

void set_timeouts(int fd) {
  timeval tv{20, 0};  // every blocking call ends within 20 s
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  const int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

sockaddr_in address(const std::string& ip, int port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  if (inet_pton(AF_INET, ip.c_str(), &a.sin_addr) != 1) die("bad address " + ip);
  return a;
}

int accept_one(const std::string& ip, int port) {
  const int s = socket(AF_INET, SOCK_STREAM, 0);
  const int one = 1;
  setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a = address(ip, port);
  if (bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) die("bind " + ip);
  if (listen(s, 1) != 0) die("listen");
  set_timeouts(s);  // accept() times out too
  const int c = accept(s, nullptr, nullptr);
  if (c < 0) die("accept");
  close(s);
  set_timeouts(c);
  return c;
}

int connect_retrying(const std::string& ip, int port) {
  const auto deadline = Clock::now() + std::chrono::seconds(10);
  for (;;) {
    const int s = socket(AF_INET, SOCK_STREAM, 0);
    set_timeouts(s);
    sockaddr_in a = address(ip, port);
    if (connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) return s;
    close(s);
    if (Clock::now() > deadline) die("connect to " + ip);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // the listener is not up yet
  }
}

void send_all(int fd, const char* p, size_t n) {
  while (n > 0) {
    const ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
    if (k <= 0) die("send");
    p += k;
    n -= static_cast<size_t>(k);
  }
}

// Receives exactly n bytes; returns seconds from the first byte to the last.
double recv_all(int fd, size_t n) {
  std::vector<char> buf(1 << 20);
  Clock::time_point first{};
  size_t got = 0;
  while (got < n) {
    const ssize_t k = recv(fd, buf.data(), std::min(buf.size(), n - got), 0);
    if (k <= 0) die("recv");
    if (got == 0) first = Clock::now();
    got += static_cast<size_t>(k);
  }
  return std::chrono::duration<double>(Clock::now() - first).count();
}

double parse_rate(const std::string& s) {
  const double v = std::atof(s.c_str());
  if (s.ends_with("gbit")) return v * 1e9;
  if (s.ends_with("mbit")) return v * 1e6;
  if (s.ends_with("kbit")) return v * 1e3;
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  size_t bytes = 12500000;
  double expect_bps = 0, tolerance = 0.25, min_rtt_ms = -1, max_rtt_ms = -1;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--bytes") bytes = std::strtoull(v.c_str(), nullptr, 10);
    else if (k == "--expect-rate") expect_bps = parse_rate(v);
    else if (k == "--tolerance") tolerance = std::atof(v.c_str());
    else if (k == "--min-rtt-ms") min_rtt_ms = std::atof(v.c_str());
    else if (k == "--max-rtt-ms") max_rtt_ms = std::atof(v.c_str());
    else {
      std::fprintf(stderr, "lan_tcp_probe: unknown option %s\n", k.c_str());
      return 2;
    }
  }
  const int rank = std::atoi(env("RANK").c_str());
  const int port = std::atoi(env("MASTER_PORT").c_str());
  const int fd = rank == 0 ? accept_one(env("MASTER_ADDR"), port) : connect_retrying(env("MASTER_ADDR"), port);
  std::vector<char> data(bytes, 'x');
  char token = 0;
  bool ok = true;

  // Rank 1 -> rank 0, then rank 0 -> rank 1: each direction crosses a different pair of qdiscs.
  for (int sender = 1; sender >= 0; --sender) {
    if (rank == sender) {
      send_all(fd, data.data(), data.size());
      if (recv(fd, &token, 1, MSG_WAITALL) != 1) die("recv ack");
      continue;
    }
    const double s = recv_all(fd, bytes);
    send_all(fd, &token, 1);
    const double bps = static_cast<double>(bytes) * 8 / s;
    std::printf("rank %d received %zu bytes from rank %d in %.3f s: %.1f Mbit/s", rank, bytes, sender, s, bps / 1e6);
    if (expect_bps > 0) {
      const double ratio = bps / expect_bps;
      const bool in = ratio > 1 - tolerance && ratio < 1 + tolerance;
      std::printf(" (%.2f of the %.0f Mbit/s rate: %s)", ratio, expect_bps / 1e6, in ? "ok" : "OUT OF TOLERANCE");
      ok = ok && in;
    }
    std::printf("\n");
  }

  // Round trips of one byte: the delay shows here, not in bulk throughput.
  std::vector<double> rtts;
  for (int i = 0; i < 21; ++i) {
    if (rank == 1) {
      const auto t0 = Clock::now();
      send_all(fd, &token, 1);
      if (recv(fd, &token, 1, MSG_WAITALL) != 1) die("recv pong");
      rtts.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
    } else {
      if (recv(fd, &token, 1, MSG_WAITALL) != 1) die("recv ping");
      send_all(fd, &token, 1);
    }
  }
  if (rank == 1) {
    std::sort(rtts.begin(), rtts.end());
    const double rtt = rtts[rtts.size() / 2];
    const bool in = (min_rtt_ms < 0 || rtt >= min_rtt_ms) && (max_rtt_ms < 0 || rtt <= max_rtt_ms);
    std::printf("rank 1 median round trip %.3f ms%s\n", rtt, in ? "" : " OUT OF RANGE");
    ok = ok && in;
  }
  close(fd);
  return ok ? 0 : 1;
}
