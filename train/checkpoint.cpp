// Saving and loading checkpoints (see checkpoint.hpp). Files are written under a temporary name and
// renamed, and `latest` moves only after every rank has written, so a crash mid-save leaves the
// previous checkpoint usable.
#include "train/checkpoint.hpp"

#include <torch/serialize.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

#include "onebit/error.hpp"

namespace fs = std::filesystem;

namespace onebit::train {
namespace {

std::string step_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step_%08lld", static_cast<long long>(step));
  return buf;
}

std::string slurp(const fs::path& p) {
  std::ifstream in(p);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

void write_atomic(const fs::path& p, const std::string& text) {
  const fs::path tmp = p.string() + ".tmp";
  {
    std::ofstream out(tmp);
    out << text;
    ONEBIT_CHECK(out.good(), "onebit train checkpoint: cannot write " << tmp);
  }
  fs::rename(tmp, p);
}

template <class Archive>
void save_archive(Archive& a, const fs::path& p) {
  const std::string tmp = p.string() + ".tmp";
  a.save_to(tmp);
  fs::rename(tmp, p);
}

}  // namespace

void save_checkpoint(const std::string& out_dir, int64_t step, TorchOptimizer& opt, const nlohmann::json& meta,
                     Communicator& comm) {
  const int rank = comm.rank();
  const fs::path root = fs::path(out_dir) / "checkpoints";
  const fs::path dir = root / step_name(step);
  try {
    fs::create_directories(dir);
    if (rank == 0) {
      torch::serialize::OutputArchive weights;
      weights.write("params", opt.flat().params().clone());
      save_archive(weights, dir / "model.pt");
      write_atomic(dir / "meta.json", meta.dump(2) + "\n");
    }
    torch::serialize::OutputArchive state;
    opt.save(state);
    save_archive(state, dir / ("optimizer_rank" + std::to_string(rank) + ".pt"));
  } catch (const onebit::Error&) {
    throw;
  } catch (const std::exception& e) {
    ONEBIT_CHECK(false, "onebit train: saving checkpoint " << dir << " on rank " << rank << " failed: " << e.what());
  }
  comm.barrier();  // every rank's file is in place
  if (rank != 0) return;
  write_atomic(root / "latest", step_name(step) + "\n");
  std::vector<fs::path> old;
  for (const auto& e : fs::directory_iterator(root))
    if (e.is_directory() && e.path().filename().string().rfind("step_", 0) == 0) old.push_back(e.path());
  std::sort(old.begin(), old.end());
  for (size_t i = 0; i + kKeepCheckpoints < old.size(); ++i) fs::remove_all(old[i]);
}

std::string find_checkpoint(const std::string& path) {
  const fs::path p(path);
  if (fs::exists(p / "meta.json")) return p.string();
  const fs::path latest = p / "checkpoints" / "latest";
  ONEBIT_CHECK(fs::exists(latest), "onebit train --resume " << path << ": no checkpoint there (neither "
                                                            << (p / "meta.json") << " nor " << latest << ")");
  std::string name = slurp(latest);
  while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) name.pop_back();
  const fs::path dir = p / "checkpoints" / name;
  ONEBIT_CHECK(fs::exists(dir / "meta.json"), "onebit train --resume " << path << ": " << latest << " names "
                                                                       << dir << ", which has no meta.json");
  return dir.string();
}

nlohmann::json read_checkpoint_meta(const std::string& dir) {
  try {
    return nlohmann::json::parse(slurp(fs::path(dir) / "meta.json"));
  } catch (const std::exception& e) {
    ONEBIT_CHECK(false, "onebit train --resume: " << dir << "/meta.json is unreadable: " << e.what());
  }
  return {};
}

std::string load_checkpoint(const std::string& dir, TorchOptimizer& opt, int rank, int saved_world, OnResize on_resize) {
  const fs::path d(dir);
  // Resized, every rank's error buffers restart at zero and the rest is the same on every rank.
  const int from = saved_world == opt.comm().size() ? rank : 0;
  const fs::path state_file = d / ("optimizer_rank" + std::to_string(from) + ".pt");
  ONEBIT_CHECK(fs::exists(state_file), "onebit train --resume on rank " << rank << ": " << state_file
                                                                         << " is missing (was the run saved with fewer workers?)");
  try {
    torch::serialize::InputArchive weights;
    weights.load_from((d / "model.pt").string());
    at::Tensor p;
    weights.read("params", p);
    ONEBIT_CHECK(p.numel() == static_cast<int64_t>(opt.flat().layout().total()),
                 "onebit train --resume on rank " << rank << ": the checkpoint holds " << p.numel()
                                                  << " weights, the model " << opt.flat().layout().total());
    {
      torch::NoGradGuard no_grad;
      opt.flat().params().copy_(p.reshape({-1}));  // onto the buffers' device, as fp32
    }
    opt.flat().write_back();
    torch::serialize::InputArchive state;
    state.load_from(state_file.string());
    return opt.load(state, on_resize);
  } catch (const onebit::Error&) {
    throw;
  } catch (const std::exception& e) {
    std::string cause = e.what();
    if (auto nl = cause.find('\n'); nl != std::string::npos) cause.resize(nl);
    ONEBIT_CHECK(false, "onebit train --resume from " << dir << " on rank " << rank << " failed: " << cause);
  }
  return {};
}

}  // namespace onebit::train
