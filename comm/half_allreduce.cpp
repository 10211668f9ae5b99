// The 16-bit warmup exchange (docs/algorithm.md §11): an all-to-all of the rounded gradients, an
// fp32 average per chunk, an all-gather of the rounded averages.
#include "onebit/half_allreduce.hpp"

#include "onebit/error.hpp"

namespace onebit {

const char* to_string(WirePrecision p) {
  switch (p) {
    case WirePrecision::kFp32: return "fp32";
    case WirePrecision::kBf16: return "bf16";
    case WirePrecision::kFp16: return "fp16";
  }
  return "?";
}

WirePrecision parse_wire_precision(const std::string& name) {
  for (auto p : {WirePrecision::kFp32, WirePrecision::kBf16, WirePrecision::kFp16})
    if (name == to_string(p)) return p;
  throw Error("unknown exchange precision '" + name + "': use fp32, bf16 or fp16");
}

HalfAllreduce::HalfAllreduce(Communicator& comm, ThreadPool& pool, size_t n, WirePrecision precision)
    : comm_(comm), pool_(pool), n_(n), precision_(precision) {
  ONEBIT_CHECK(precision != WirePrecision::kFp32, "HalfAllreduce needs bf16 or fp16, got fp32");
  const auto P = static_cast<size_t>(comm.size());
  chunk_ = (n + P - 1) / P;
  wire_.assign(chunk_ * P, 0);  // the padding stays 0 and is never read back
  received_.resize(chunk_ * P);
  mine_.resize(chunk_);
}

void HalfAllreduce::average(std::span<float> x) {
  ONEBIT_CHECK(x.size() == n_, "16-bit allreduce on rank " << comm_.rank() << ": " << x.size()
                                   << " elements, built for " << n_);
  const int P = comm_.size();
  if (P == 1) return;  // like the fp32 exchange: nothing to average, nothing rounded
  const bool bf16 = precision_ == WirePrecision::kBf16;
  const auto to16 = bf16 ? to_bf16 : to_fp16;
  const auto from16 = bf16 ? from_bf16 : from_fp16;
  pool_.for_range(n_, [&](size_t b, size_t e) {
    for (size_t i = b; i < e; ++i) wire_[i] = to16(x[i]);
  });
  auto bytes = [](std::vector<uint16_t>& v) { return std::as_writable_bytes(std::span<uint16_t>(v)); };
  comm_.alltoall(bytes(wire_), bytes(received_));
  // This rank serves chunk rank(): the sum runs over ranks in order, so it is the same on any engine.
  const auto Pf = static_cast<float>(P);
  pool_.for_range(chunk_, [&](size_t b, size_t e) {
    for (size_t i = b; i < e; ++i) {
      float s = from16(received_[i]);
      for (size_t p = 1; p < static_cast<size_t>(P); ++p) s += from16(received_[p * chunk_ + i]);
      mine_[i] = to16(s / Pf);
    }
  });
  comm_.allgather(std::as_bytes(std::span<const uint16_t>(mine_)), bytes(received_));
  pool_.for_range(n_, [&](size_t b, size_t e) {
    for (size_t i = b; i < e; ++i) x[i] = from16(received_[i]);
  });
}

}  // namespace onebit
