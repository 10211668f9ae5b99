// libFuzzer target for the checkpoint reader: any bytes give a state or an onebit::Error, never a
// crash, a hang or undefined behaviour (built with AddressSanitizer and UBSan).
#include <cstddef>
#include <cstdint>
#include <span>

#include "onebit/checkpoint.hpp"
#include "onebit/error.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const onebit::OptimizerState s =
        onebit::decode_state(std::as_bytes(std::span<const uint8_t>(data, size)));
    // What decodes must encode back to the same bytes.
    const auto again = onebit::encode_state(s);
    if (again.size() != size) __builtin_trap();
  } catch (const onebit::Error&) {
  }
  return 0;
}
