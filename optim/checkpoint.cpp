// The checkpoint format: "ONEBITCK", version, counters, tensors, then an FNV-1a 64 checksum of all
// preceding bytes. Little-endian, as every machine onebit runs on.
#include "onebit/checkpoint.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <limits>

#include "onebit/error.hpp"
#include "onebit/fnv1a.hpp"

namespace onebit {
namespace {

constexpr char kMagic[8] = {'O', 'N', 'E', 'B', 'I', 'T', 'C', 'K'};
constexpr uint64_t kMaxName = 4096;

uint64_t checksum(std::span<const std::byte> b) { return fnv1a(b.data(), b.size(), kCheckpointChecksumSeed); }

class Writer {
 public:
  template <class T>
  void put(const T& v) { raw(&v, sizeof v); }
  void raw(const void* p, size_t n) {
    const auto* b = static_cast<const std::byte*>(p);
    out.insert(out.end(), b, b + n);
  }
  void str(const std::string& s) {
    put<uint64_t>(s.size());
    raw(s.data(), s.size());
  }
  std::vector<std::byte> out;
};

class Reader {
 public:
  explicit Reader(std::span<const std::byte> b) : b_(b) {}
  template <class T>
  T get(const char* what) {
    T v;
    raw(&v, sizeof v, what);
    return v;
  }
  void raw(void* p, size_t n, const char* what) {
    ONEBIT_CHECK(n <= b_.size() - pos_, "checkpoint: truncated while reading " << what << " at byte " << pos_);
    if (n == 0) return;  // p may be the null data() of an empty tensor
    std::memcpy(p, b_.data() + pos_, n);
    pos_ += n;
  }
  std::string str(const char* what) {
    const uint64_t n = get<uint64_t>(what);
    ONEBIT_CHECK(n <= kMaxName, "checkpoint: " << what << " of " << n << " bytes is not a name");
    std::string s(n, '\0');
    raw(s.data(), n, what);
    return s;
  }
  size_t left() const { return b_.size() - pos_; }

 private:
  std::span<const std::byte> b_;
  size_t pos_ = 0;
};

}  // namespace

std::vector<std::byte> encode_state(const OptimizerState& s) {
  Writer w;
  w.raw(kMagic, sizeof kMagic);
  w.put<uint32_t>(kCheckpointVersion);
  w.put<uint64_t>(s.counters.size());
  for (const auto& [name, v] : s.counters) {
    w.str(name);
    w.put<int64_t>(v);
  }
  w.put<uint64_t>(s.tensors.size());
  for (const auto& [name, t] : s.tensors) {
    w.str(name);
    w.put<uint64_t>(t.size());
    w.raw(t.data(), t.size() * sizeof(float));
  }
  w.put<uint64_t>(checksum(w.out));
  return std::move(w.out);
}

OptimizerState decode_state(std::span<const std::byte> bytes) {
  ONEBIT_CHECK(bytes.size() >= sizeof kMagic + 4 + 8, "checkpoint: " << bytes.size() << " bytes is too short");
  ONEBIT_CHECK(std::memcmp(bytes.data(), kMagic, sizeof kMagic) == 0, "checkpoint: not a onebit checkpoint");
  uint64_t stored;
  std::memcpy(&stored, bytes.data() + bytes.size() - 8, 8);
  const auto body = bytes.first(bytes.size() - 8);
  Reader r(body);
  char magic[8];
  r.raw(magic, sizeof magic, "magic");
  const uint32_t version = r.get<uint32_t>("version");
  ONEBIT_CHECK(version == kCheckpointVersion, "checkpoint: format version " << version << ", this build reads "
                                                                             << kCheckpointVersion);
  ONEBIT_CHECK(checksum(body) == stored, "checkpoint: checksum mismatch (the file is corrupt or truncated)");
  OptimizerState s;
  const uint64_t counters = r.get<uint64_t>("counter count");
  ONEBIT_CHECK(counters <= r.left() / 16, "checkpoint: " << counters << " counters cannot fit");
  for (uint64_t i = 0; i < counters; ++i) {
    std::string name = r.str("counter name");
    const int64_t value = r.get<int64_t>("counter value");
    ONEBIT_CHECK(s.counters.emplace(name, value).second, "checkpoint: counter '" << name << "' appears twice");
  }
  const uint64_t tensors = r.get<uint64_t>("tensor count");
  ONEBIT_CHECK(tensors <= r.left() / 16, "checkpoint: " << tensors << " tensors cannot fit");
  for (uint64_t i = 0; i < tensors; ++i) {
    std::string name = r.str("tensor name");
    const uint64_t n = r.get<uint64_t>("tensor size");
    ONEBIT_CHECK(n <= r.left() / sizeof(float), "checkpoint: tensor '" << name << "' of " << n
                                                                       << " elements is longer than the file");
    std::vector<float> t(n);
    r.raw(t.data(), n * sizeof(float), "tensor data");
    ONEBIT_CHECK(s.tensors.emplace(name, std::move(t)).second, "checkpoint: tensor '" << name << "' appears twice");
  }
  ONEBIT_CHECK(r.left() == 0, "checkpoint: " << r.left() << " unexpected bytes after the last tensor");
  return s;
}

void save_checkpoint(const std::string& path, const OptimizerState& s) {
  const std::vector<std::byte> bytes = encode_state(s);
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  ONEBIT_CHECK(fd >= 0, "checkpoint: cannot create " << tmp << ": " << std::strerror(errno));
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      ONEBIT_CHECK(false, "checkpoint: writing " << tmp << " failed: " << std::strerror(err));
    }
    done += static_cast<size_t>(n);
  }
  // The data must be on disk before the rename makes it the checkpoint.
  const bool synced = ::fsync(fd) == 0;
  ::close(fd);
  ONEBIT_CHECK(synced, "checkpoint: fsync of " << tmp << " failed: " << std::strerror(errno));
  ONEBIT_CHECK(std::rename(tmp.c_str(), path.c_str()) == 0,
               "checkpoint: cannot rename " << tmp << " to " << path << ": " << std::strerror(errno));
}

OptimizerState load_checkpoint(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  ONEBIT_CHECK(f, "checkpoint: cannot open " << path);
  std::vector<char> data((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  try {
    return decode_state(std::as_bytes(std::span(data)));
  } catch (const Error& e) {
    throw Error(path + ": " + e.what());
  }
}

}  // namespace onebit
