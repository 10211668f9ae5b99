// Naming the lost rank when a collective fails over a store-based engine (Gloo, NCCL): every rank
// beats a heartbeat into the job's store, and a rank whose collective fails reads them to say who is gone.
// `onebit train` watches its communicator so; the Python optimizers do when they know the store.
#pragma once
#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include <torch/csrc/distributed/c10d/Store.hpp>

#include "onebit/communicator.hpp"

namespace onebit {

// Opens a new client connection to the job's store (the heartbeat and the diagnosis each own one,
// so neither shares a socket with another thread).
using StoreConnector = std::function<c10::intrusive_ptr<c10d::Store>()>;

// Client connections to the TCPStore at host:port (the job's rendezvous store: MASTER_ADDR and
// MASTER_PORT under torchrun), each with `timeout` on its requests.
StoreConnector tcp_store_connector(std::string host, int port, std::chrono::milliseconds timeout);

// The time a failed collective spends finding out who is gone: two looks at the heartbeats, this
// far apart. The wrapped engine gets timeout() minus this, so the whole failure fits in timeout().
inline constexpr std::chrono::milliseconds kDiagnosisWindow{1500};

// `inner` with every collective watched: rank r writes "<beat> <collectives entered>" under
// <prefix>/heartbeat/<r> every kDiagnosisWindow / 3 (one prefix per watched communicator of a
// job). When a collective fails, the error says which ranks' heartbeats stood still across the
// window (dead or frozen), which are alive but have not entered this collective (stalled), or that
// rank 0's store does not answer (rank 0 is lost).
// The failing rank then marks <prefix>/failed/<r> (a rank that ended so is not lost), and rank 0
// keeps the store up, at most timeout(), until the healthy ranks have marked theirs.
std::shared_ptr<Communicator> watch_ranks(std::shared_ptr<Communicator> inner, const StoreConnector& connect,
                                          const std::string& prefix = "onebit");

}  // namespace onebit
