// libFuzzer target for the checkpoint reader: any bytes give a state or an onebit::Error, never a
// crash, a hang or undefined behaviour (built with AddressSanitizer and UBSan).
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include "onebit/checkpoint.hpp"
#include "onebit/error.hpp"
#include "onebit/fnv1a.hpp"

namespace {

void decode(std::span<const std::byte> bytes) {
  try {
    const onebit::OptimizerState s = onebit::decode_state(bytes);
    // What decodes must encode back to the same bytes.
    if (onebit::encode_state(s).size() != bytes.size()) __builtin_trap();
  } catch (const onebit::Error&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto bytes = std::as_bytes(std::span<const uint8_t>(data, size));
  decode(bytes);
  // The same bytes with a valid checksum appended (FNV-1a 64, as the writer does), so the fuzzer
  // also reaches the parser behind the checksum instead of stopping at it.
  const uint64_t h = onebit::fnv1a(data, size, onebit::kCheckpointChecksumSeed);
  std::vector<std::byte> sealed(bytes.begin(), bytes.end());
  sealed.resize(size + sizeof h);
  std::memcpy(sealed.data() + size, &h, sizeof h);
  decode(sealed);
  return 0;
}
