// The corpus, the cores and the weights across the ranks of a job (see sharing.hpp).
#include "train/sharing.hpp"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <thread>

#include "onebit/error.hpp"
#include "onebit/fnv1a.hpp"

namespace onebit::train {
namespace {

template <class T>
void broadcast_vector(Communicator& comm, std::vector<T>& v, size_t n) {
  v.resize(n);
  if (n) comm.broadcast(std::as_writable_bytes(std::span<T>(v)), 0);
}

}  // namespace

PreparedCorpus share_corpus(const TrainOptions& o, Communicator& comm) {
  CorpusOptions co{o.data, o.vocab, o.heldout, o.cache_dir, comm.rank() == 0};
  if (comm.size() == 1) return prepare_corpus(co);
  PreparedCorpus c;
  std::string error;
  if (comm.rank() == 0) {
    try {
      c = prepare_corpus(co);
    } catch (const std::exception& e) {
      error = e.what();
    }
  }
  // Learning a tokenizer on a big corpus takes minutes; the other ranks wait for it here.
  const auto saved = comm.timeout();
  comm.set_timeout(std::max<std::chrono::milliseconds>(saved, std::chrono::minutes(30)));
  std::vector<int64_t> sizes{static_cast<int64_t>(error.size()), static_cast<int64_t>(c.key.size()),
                             static_cast<int64_t>(c.tokenizer_model.size()), static_cast<int64_t>(c.train.size()),
                             static_cast<int64_t>(c.heldout.size()), c.train_documents, c.heldout_documents};
  comm.broadcast(std::as_writable_bytes(std::span<int64_t>(sizes)), 0);
  std::vector<char> text;
  if (comm.rank() == 0) text.assign(error.begin(), error.end());
  broadcast_vector(comm, text, static_cast<size_t>(sizes[0]));
  if (sizes[0] > 0) {
    comm.set_timeout(saved);
    if (comm.rank() == 0) throw Error(error);
    ONEBIT_CHECK(false, "onebit train on rank " << comm.rank() << ": rank 0 could not prepare the corpus: "
                                                << std::string(text.begin(), text.end()));
  }
  auto share_string = [&](std::string& s, int64_t n) {
    std::vector<char> buf(s.begin(), s.end());
    broadcast_vector(comm, buf, static_cast<size_t>(n));
    s.assign(buf.begin(), buf.end());
  };
  share_string(c.key, sizes[1]);
  share_string(c.tokenizer_model, sizes[2]);
  broadcast_vector(comm, c.train, static_cast<size_t>(sizes[3]));
  broadcast_vector(comm, c.heldout, static_cast<size_t>(sizes[4]));
  c.train_documents = sizes[5];
  c.heldout_documents = sizes[6];
  comm.set_timeout(saved);
  return c;
}

uint64_t weights_fingerprint(TorchOptimizer& opt) {
  const at::Tensor w = opt.flat().params().to(at::kCPU).contiguous();  // no copy on the CPU
  return fnv1a(std::string_view(static_cast<const char*>(w.data_ptr()), w.nbytes()));
}

void check_ranks_identical(TorchOptimizer& opt, Communicator& comm, const char* when) {
  const uint64_t mine = weights_fingerprint(opt);
  std::vector<uint64_t> all(static_cast<size_t>(comm.size()));
  comm.allgather_values<uint64_t>(std::span<const uint64_t>(&mine, 1), all);
  for (size_t r = 0; r < all.size(); ++r)
    ONEBIT_CHECK(all[r] == all[0], "onebit train " << when << ": rank " << r << "'s weights differ from rank 0's "
                                                   << "(fingerprints " << std::hex << all[r] << " vs " << all[0] << ")");
}

int threads_per_rank(int requested, int world) {
  if (requested > 0) return requested;
  int local = world;
  for (const char* v : {"LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_NTASKS_PER_NODE"})
    if (const char* s = std::getenv(v); s && std::atoi(s) > 0) {
      local = std::atoi(s);
      break;
    }
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  return std::max(1, cores / std::max(1, local));
}

}  // namespace onebit::train
