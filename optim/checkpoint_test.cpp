// Checkpoint files: round trip, every truncation and every flipped byte rejected with a clear error,
// and a failed save that leaves the previous checkpoint intact.
#include "onebit/checkpoint.hpp"

#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <cmath>
#include <cstring>
#include <sys/stat.h>

#include "../tests/simulation.hpp"
#include "onebit/error.hpp"
#include "onebit/local_comm.hpp"

namespace onebit {
namespace {

OptimizerState sample_state() {
  OptimizerState s;
  s.counters = {{"step", 12}, {"skipped", 1}, {"world_size", 3}};
  s.tensors["m"] = {1.5f, -2.0f, 0.0f, -0.0f};
  s.tensors["worker_error"] = {3.25f};
  s.tensors["k"] = {};
  return s;
}

TEST(Checkpoint, RoundTripsExactly) {
  const OptimizerState s = sample_state();
  const OptimizerState back = decode_state(encode_state(s));
  EXPECT_EQ(back.counters, s.counters);
  ASSERT_EQ(back.tensors.size(), s.tensors.size());
  for (const auto& [k, v] : s.tensors)
    ASSERT_TRUE(testing::bitwise_equal(back.tensors.at(k), v)) << k;  // -0.0 too
}

TEST(Checkpoint, EveryTruncationAndEveryFlippedByteIsAnError) {
  const std::vector<std::byte> good = encode_state(sample_state());
  for (size_t n = 0; n < good.size(); ++n)
    EXPECT_THROW(decode_state(std::span(good).first(n)), Error) << "truncated to " << n;
  for (size_t i = 0; i < good.size(); ++i) {
    std::vector<std::byte> bad = good;
    bad[i] ^= std::byte{0x20};
    EXPECT_THROW(decode_state(bad), Error) << "byte " << i;
  }
}

TEST(Checkpoint, NamesTheProblem) {
  std::vector<std::byte> v = encode_state(sample_state());
  v[8] = std::byte{7};  // version
  try {
    decode_state(v);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("version 7"), std::string::npos) << e.what();
  }
  const std::vector<std::byte> junk(100, std::byte{'x'});
  EXPECT_THROW(decode_state(junk), Error);
}

// A name written twice (found by the fuzzer): refused, not silently collapsed into one entry.
TEST(Checkpoint, ANameWrittenTwiceIsAnError) {
  OptimizerState one;
  one.counters = {{"a", 1}};
  std::vector<std::byte> v = encode_state(one);
  v.resize(v.size() - 8);                           // drop the checksum
  const size_t record = 8 + 8 + 1 + 8;              // after magic, version, count: length, "a", value
  const size_t first = 8 + 4 + 8;
  v.insert(v.begin() + first + 8 + 1 + 8, v.begin() + first, v.begin() + first + (record - 8));
  v[8 + 4] = std::byte{2};                          // two counters
  uint64_t h = 1469598103934665603ull;              // FNV-1a 64, as the writer seals a file
  for (std::byte b : v) h = (h ^ static_cast<uint8_t>(b)) * 1099511628211ull;
  v.resize(v.size() + 8);
  std::memcpy(v.data() + v.size() - 8, &h, 8);
  try {
    decode_state(v);
    FAIL() << "a duplicated counter was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("counter 'a' appears twice"), std::string::npos) << e.what();
  }
}

TEST(Checkpoint, OptimizerResumesFromAFile) {
  const std::string path = ::testing::TempDir() + "/onebit_ckpt_test.bin";
  run_local(2, [&](Communicator& comm) {
    const FlatLayout layout({100, 37});
    OnebitLambOptions o;
    o.freeze_step = 2;
    OnebitLamb a(layout, comm, o), b(layout, comm, o);
    std::vector<float> wa(layout.total(), 0.1f), g(layout.total());
    for (int t = 0; t < 4; ++t) {
      for (size_t i = 0; i < g.size(); ++i) g[i] = std::sin(0.1f * i + t + comm.rank());
      ASSERT_TRUE(a.step(wa, g));
    }
    const std::string mine = path + std::to_string(comm.rank());
    save_checkpoint(mine, a.state());
    b.load_state(load_checkpoint(mine));
    EXPECT_EQ(b.state().tensors, a.state().tensors);
    std::remove(mine.c_str());
  });
}

TEST(Checkpoint, AFailedSaveKeepsTheLastGoodOne) {
  const std::string path = ::testing::TempDir() + "/onebit_ckpt_keep.bin";
  save_checkpoint(path, sample_state());
  // A directory where the temporary file should go makes the save fail before the rename.
  const std::string tmp = path + ".tmp";
  ::rmdir(tmp.c_str());  // a leftover of an interrupted run
  ASSERT_EQ(0, ::mkdir(tmp.c_str(), 0755));
  EXPECT_THROW(save_checkpoint(path, OptimizerState{}), Error);
  EXPECT_EQ(load_checkpoint(path).counters, sample_state().counters);
  ::rmdir(tmp.c_str());
  std::remove(path.c_str());
  EXPECT_THROW(load_checkpoint(path), Error);
}

}  // namespace
}  // namespace onebit
