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
  const size_t chunk = (n + P - 1) / P;
  wire_.assign(chunk * P, 0);
  received_.resize(chunk * P);
  mine_.resize(chunk);
}

namespace {
// The three passes for one precision; To16 and From16 are the pinned conversions, inlined (called
// through a function pointer they cost more than the whole exchange on a fast link).
// x.size() <= wire.size(): the first P chunks of `chunk` elements of each buffer are used; the
// padding past x is sent as whatever it holds and never read back.
template <uint16_t (*To16)(float), float (*From16)(uint16_t)>
void exchange(Communicator& comm, ThreadPool& pool, std::span<float> x, size_t chunk, std::vector<uint16_t>& wire,
              std::vector<uint16_t>& received, std::vector<uint16_t>& mine) {
  const auto P = static_cast<size_t>(comm.size());
  pool.for_range(x.size(), [&](size_t b, size_t e) {
    for (size_t i = b; i < e; ++i) wire[i] = To16(x[i]);
  });
  auto bytes = [&](std::vector<uint16_t>& v, size_t n) { return std::as_writable_bytes(std::span<uint16_t>(v).first(n)); };
  comm.alltoall(bytes(wire, chunk * P), bytes(received, chunk * P));
  // This rank serves chunk rank(): the sum runs over ranks in order, so it is the same on any engine.
  const auto Pf = static_cast<float>(P);
  pool.for_range(chunk, [&](size_t b, size_t e) {
    for (size_t i = b; i < e; ++i) {
      float s = From16(received[i]);
      for (size_t p = 1; p < P; ++p) s += From16(received[p * chunk + i]);
      mine[i] = To16(s / Pf);
    }
  });
  comm.allgather(std::as_bytes(std::span<const uint16_t>(mine).first(chunk)), bytes(received, chunk * P));
  pool.for_range(x.size(), [&](size_t b, size_t e) {
    for (size_t i = b; i < e; ++i) x[i] = From16(received[i]);
  });
}
}  // namespace

void HalfAllreduce::average(std::span<float> x) {
  ONEBIT_CHECK(x.size() <= n_, "16-bit allreduce on rank " << comm_.rank() << ": " << x.size()
                                   << " elements, built for at most " << n_);
  if (comm_.size() == 1) return;  // like the fp32 exchange: nothing to average, nothing rounded
  const auto P = static_cast<size_t>(comm_.size());
  const size_t chunk = (x.size() + P - 1) / P;
  if (precision_ == WirePrecision::kBf16)
    exchange<to_bf16, from_bf16>(comm_, pool_, x, chunk, wire_, received_, mine_);
  else
    exchange<to_fp16, from_fp16>(comm_, pool_, x, chunk, wire_, received_, mine_);
}

}  // namespace onebit
