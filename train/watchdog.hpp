// Naming the lost rank when a collective fails over a store-based engine (Gloo, NCCL): every rank
// beats a heartbeat into the job's store, and a rank whose collective fails reads them to say who is gone.
#pragma once
#include <chrono>
#include <functional>
#include <memory>

#include <torch/csrc/distributed/c10d/Store.hpp>

#include "onebit/communicator.hpp"

namespace onebit::train {

// Opens a new client connection to the job's store (the heartbeat and the diagnosis each own one,
// so neither shares a socket with another thread).
using StoreConnector = std::function<c10::intrusive_ptr<c10d::Store>()>;

// The time a failed collective spends finding out who is gone: two looks at the heartbeats, this
// far apart. The wrapped engine gets timeout() minus this, so the whole failure fits in timeout().
inline constexpr std::chrono::milliseconds kDiagnosisWindow{1500};

// `inner` with every collective watched: rank r writes "<beat> <collectives entered>" under
// onebit/heartbeat/<r> every kDiagnosisWindow / 3. When a collective fails, the error says which
// ranks' heartbeats stood still across the window (dead or frozen), which are alive but have not
// entered this collective (stalled), or that rank 0's store does not answer (rank 0 is lost).
// The failing rank then marks onebit/failed/<r> (a rank that ended so is not lost), and rank 0
// keeps the store up, at most timeout(), until the healthy ranks have marked theirs.
std::shared_ptr<Communicator> watch_ranks(std::shared_ptr<Communicator> inner, const StoreConnector& connect);

}  // namespace onebit::train
