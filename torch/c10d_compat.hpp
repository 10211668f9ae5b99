// The one place where torch versions differ for onebit (1.13 on Debian, 2.x on the GPU machines):
// c10d headers, the Work type, and how a ProcessGroup is found behind a Python object.
#pragma once
#include <torch/version.h>

#include <chrono>
#include <string>

#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/Types.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>

namespace onebit::c10d_compat {

// 1.13 and 2.x both name it c10d::Work (before 1.13 it was c10d::ProcessGroup::Work).
using Work = ::c10d::Work;
using ProcessGroupPtr = c10::intrusive_ptr<::c10d::ProcessGroup>;

inline constexpr int kTorchMajor = TORCH_VERSION_MAJOR;
inline constexpr int kTorchMinor = TORCH_VERSION_MINOR;

// Work::wait(timeout) throws (1.13: "Operation timed out!") or returns false past the deadline,
// depending on the version and backend; both become `false` here.
inline bool wait(Work& work, std::chrono::milliseconds timeout) {
  return work.wait(timeout);
}

// The backend's own name ("gloo", "nccl", ...). In 2.x a ProcessGroup wraps per-device backends and
// getBackendName() names the default one; 1.13's ProcessGroupGloo answers itself.
inline std::string backend_name(const ::c10d::ProcessGroup& pg) { return pg.getBackendName(); }

// The engine behind the group's collectives on CUDA tensors: a 2.x ProcessGroup holds one Backend
// per device type (and throws when it has none for CUDA); 1.13's groups are their own backend.
inline std::string cuda_backend_name(::c10d::ProcessGroup& pg) {
#if TORCH_VERSION_MAJOR >= 2
  return pg.getBackend(c10::DeviceType::CUDA)->getBackendName();
#else
  return pg.getBackendName();
#endif
}

// A ProcessGroup reached through a raw pointer that Python owns (pybind11 gives the pointer, the
// holder type differs between versions); the returned pointer holds its own reference.
inline ProcessGroupPtr adopt(::c10d::ProcessGroup* pg) {
  return ProcessGroupPtr::reclaim_copy(pg);
}

// The engines a group can be built around here.
enum class Engine { kGloo, kNccl };

// A ProcessGroup around one backend (a ProcessGroupGloo or a ProcessGroupNCCL), as
// torch.distributed builds one: 2.x keeps a group apart from its per-device backends (and from 2.5
// takes no options); 1.13's backends are groups themselves. Gloo serves CPU and CUDA tensors, NCCL
// CUDA ones. A template so that this header needs neither backend's header.
template <class Backend>
ProcessGroupPtr group_of(const c10::intrusive_ptr<::c10d::Store>& store, int rank, int size,
                         c10::intrusive_ptr<Backend> backend, Engine engine) {
#if TORCH_VERSION_MAJOR >= 2
  using Type = ::c10d::ProcessGroup::BackendType;
  const Type type = engine == Engine::kGloo ? Type::GLOO : Type::NCCL;
#if TORCH_VERSION_MAJOR > 2 || TORCH_VERSION_MINOR >= 5
  auto group = c10::make_intrusive<::c10d::ProcessGroup>(store, rank, size);
  group->setDefaultBackend(type);
#else
  auto group = c10::make_intrusive<::c10d::ProcessGroup>(
      store, rank, size, c10::make_intrusive<::c10d::ProcessGroup::Options>(engine == Engine::kGloo ? "gloo" : "nccl"));
#endif
  if (engine == Engine::kGloo) group->setBackend(c10::DeviceType::CPU, type, backend);
  group->setBackend(c10::DeviceType::CUDA, type, backend);
  return group;
#else
  (void)store, (void)rank, (void)size, (void)engine;
  return backend;
#endif
}

}  // namespace onebit::c10d_compat
