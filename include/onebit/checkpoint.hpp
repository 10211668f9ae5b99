// Checkpoint files for OptimizerState: versioned, checksummed, written to a temporary file and
// renamed so a crash while saving never destroys the last good checkpoint.
#pragma once
#include <cstddef>
#include <span>
#include <string>
#include <vector>

#include "onebit/optimizers.hpp"

namespace onebit {

// Format version written by this build; readers reject other versions with a clear error.
constexpr uint32_t kCheckpointVersion = 1;
// The file ends with FNV-1a 64 (onebit/fnv1a.hpp) of everything before it, started from this seed:
// FNV's offset basis short of its last digit, as version 1 has always written it.
constexpr uint64_t kCheckpointChecksumSeed = 1469598103934665603ull;

std::vector<std::byte> encode_state(const OptimizerState& s);
// Throws onebit::Error naming what is wrong (magic, version, truncation, checksum, sizes).
OptimizerState decode_state(std::span<const std::byte> bytes);

void save_checkpoint(const std::string& path, const OptimizerState& s);
OptimizerState load_checkpoint(const std::string& path);

}  // namespace onebit
