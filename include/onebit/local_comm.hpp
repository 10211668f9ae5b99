// LocalWorld: ranks as threads of one process, for fast tests. Never a stand-in for a real engine
// in a benchmark.
#pragma once
#include <functional>
#include <memory>

#include "onebit/communicator.hpp"

namespace onebit {

// Runs fn(comm) on `world_size` threads, each with its own Communicator of the in-process world,
// and returns when all are done. An exception on any rank is rethrown here (the first one); the
// other ranks then fail their next wait instead of hanging.
void run_local(int world_size, const std::function<void(Communicator&)>& fn);

}  // namespace onebit
