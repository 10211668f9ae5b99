// Device memory, the device copy of a Partition, and the polling stream wait every CUDA path uses.
#include <algorithm>
#include <chrono>
#include <thread>
#include <utility>

#include "cuda_check.hpp"
#include "onebit/cuda_kernels.hpp"

namespace onebit::cuda {

bool device_available() {
  int count = 0;
  const cudaError_t rc = cudaGetDeviceCount(&count);
  if (rc != cudaSuccess) {
    (void)cudaGetLastError();  // "no device" must not linger as the next call's error
    return false;
  }
  return count > 0;
}

std::string device_name(int device) {
  cudaDeviceProp prop{};
  CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  return prop.name;
}

int compute_capability(int device) {
  cudaDeviceProp prop{};
  CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  return prop.major * 10 + prop.minor;
}

void wait_stream(Stream stream, int64_t timeout_ms, const std::string& what) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  for (int spins = 0;; ++spins) {
    const cudaError_t rc = cudaStreamQuery(stream);
    if (rc == cudaSuccess) return;
    if (rc != cudaErrorNotReady) CUDA_CHECK(rc);
    ONEBIT_CHECK(std::chrono::steady_clock::now() < deadline,
                 what << ": the GPU stream did not finish within " << timeout_ms << " ms");
    // Spin briefly (steps take milliseconds), then yield the core.
    if (spins > 200) std::this_thread::sleep_for(std::chrono::microseconds(20));
  }
}

DeviceMemory::DeviceMemory(size_t bytes) : bytes_(bytes) {
  if (bytes > 0) CUDA_CHECK(cudaMalloc(&ptr_, bytes));
}

DeviceMemory::~DeviceMemory() {
  if (ptr_) (void)cudaFree(ptr_);  // never throw from a destructor
}

DeviceMemory::DeviceMemory(DeviceMemory&& o) noexcept
    : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}

DeviceMemory& DeviceMemory::operator=(DeviceMemory&& o) noexcept {
  if (this != &o) {
    if (ptr_) (void)cudaFree(ptr_);
    ptr_ = std::exchange(o.ptr_, nullptr);
    bytes_ = std::exchange(o.bytes_, 0);
  }
  return *this;
}

void DeviceMemory::upload(const void* src, size_t bytes, size_t offset) {
  ONEBIT_CHECK(offset + bytes <= bytes_, "cuda upload: " << bytes << " bytes at " << offset
                                                         << " into a buffer of " << bytes_);
  if (bytes == 0) return;
  // cudaMemcpy may return before a pageable upload has landed; work on other streams must see it.
  CUDA_CHECK(cudaMemcpyAsync(static_cast<char*>(ptr_) + offset, src, bytes, cudaMemcpyHostToDevice, nullptr));
  CUDA_CHECK(cudaStreamSynchronize(nullptr));
}

void DeviceMemory::download(void* dst, size_t bytes, size_t offset) const {
  ONEBIT_CHECK(offset + bytes <= bytes_, "cuda download: " << bytes << " bytes at " << offset
                                                           << " from a buffer of " << bytes_);
  if (bytes > 0)
    CUDA_CHECK(cudaMemcpy(dst, static_cast<const char*>(ptr_) + offset, bytes, cudaMemcpyDeviceToHost));
}

void DeviceMemory::zero(Stream stream) {
  if (bytes_ > 0) CUDA_CHECK(cudaMemsetAsync(ptr_, 0, bytes_, stream));
}

DevicePartition::DevicePartition(const kernels::Partition& part, size_t num_groups) : host_(part) {
  const auto& pieces = part.pieces();
  ONEBIT_CHECK(pieces.size() < (size_t{1} << 31),
               "cuda partition: " << pieces.size() << " pieces exceed the 32-bit piece index");
  pieces_ = DeviceArray<kernels::Piece>(std::span<const kernels::Piece>(pieces));

  std::vector<uint32_t> block_first;
  for (size_t b = 0; b < part.num_blocks(); ++b)
    block_first.push_back(static_cast<uint32_t>(part.block(b).data() - pieces.data()));
  block_first.push_back(static_cast<uint32_t>(pieces.size()));
  block_first_ = DeviceArray<uint32_t>(std::span<const uint32_t>(block_first));

  // Pieces are in element order and layers are contiguous, so each layer's pieces are a range.
  const size_t L = part.num_layers();
  std::vector<uint32_t> layer_first(L + 1, 0);
  for (const auto& p : pieces) ++layer_first[p.layer + 1];
  for (size_t l = 0; l < L; ++l) layer_first[l + 1] += layer_first[l];
  layer_first_ = DeviceArray<uint32_t>(std::span<const uint32_t>(layer_first));
  const std::vector<uint32_t> all = {0, static_cast<uint32_t>(pieces.size())};
  all_pieces_ = DeviceArray<uint32_t>(std::span<const uint32_t>(all));

  std::vector<uint64_t> starts(L + 1);
  for (size_t l = 0; l < L; ++l) starts[l] = part.layer_start(l);
  starts[L] = part.size();
  layer_start_ = DeviceArray<uint64_t>(std::span<const uint64_t>(starts));

  // Scale groups are contiguous in piece order too; a group's size is its pieces' elements.
  size_t groups = num_groups;
  for (const auto& p : pieces) {
    ONEBIT_CHECK(num_groups == 0 || p.group < num_groups,
                 "cuda partition: a piece of scale group " << p.group << " in a partition of " << num_groups);
    groups = std::max(groups, size_t{p.group} + 1);
  }
  num_groups_ = groups;
  std::vector<uint32_t> group_first(groups + 1, 0);
  std::vector<uint64_t> group_size(groups, 0);
  for (const auto& p : pieces) {
    ++group_first[p.group + 1];
    group_size[p.group] += p.end - p.begin;
  }
  for (size_t q = 0; q < groups; ++q) group_first[q + 1] += group_first[q];
  group_first_ = DeviceArray<uint32_t>(std::span<const uint32_t>(group_first));
  group_size_ = DeviceArray<uint64_t>(std::span<const uint64_t>(group_size));

  lanes_ = DeviceArray<double>(4 * 16 * pieces.size());
  flag_ = DeviceArray<int>(1);
  flag_.zero();
  CUDA_CHECK(cudaDeviceSynchronize());  // the zero fill ran on the legacy stream
}

}  // namespace onebit::cuda
