// What every CUDA optimizer shares (the enqueue / resolve cycle, the warmup exchange, the LAMB pass,
// the cross-rank agreement check, state transfer), and CudaLamb: optim/optimizer.cpp on the GPU.
#include <cstring>

#include "cuda_check.hpp"
#include "cuda_half_allreduce.hpp"
#include "device_collectives.hpp"
#include "launchers.hpp"
#include "onebit/cuda_optimizers.hpp"
#include "options.hpp"

namespace onebit::cuda {

CudaOptimizer::CudaOptimizer(const FlatLayout& layout, Communicator& comm, Stream stream,
                             WirePrecision warmup_exchange)
    : Optimizer(layout, comm),
      stream_(stream),
      coll_(std::make_unique<DeviceCollectives>(comm, stream)),
      dpart_(kernels::Partition(layout.total(), layout.boundaries())),
      w_sq_(layout.num_layers()),
      u_sq_(layout.num_layers()),
      coef_(layout.num_layers()),
      skip_(1) {
  CUDA_CHECK(cudaMallocHost(&host_flag_, sizeof(int)));
  CUDA_CHECK(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming));
  if (warmup_exchange != WirePrecision::kFp32)
    half_ = std::make_unique<CudaHalfAllreduce>(*coll_, layout.total(), warmup_exchange);
}

void CudaOptimizer::drain() noexcept { (void)cudaStreamSynchronize(stream_); }

CudaOptimizer::~CudaOptimizer() {
  drain();  // kernels in flight use the buffers freed below
  if (done_) (void)cudaEventDestroy(done_);
  if (host_flag_) (void)cudaFreeHost(host_flag_);
}

bool CudaOptimizer::step(std::span<float> params, std::span<float> grads) {
  check_sizes(params, grads);
  step_async(params.data(), grads.data());
  return sync();
}

void CudaOptimizer::step_async(float* params, float* grads) {
  sync();  // the stage and the buffers of this step depend on the last step's outcome
  skip_.zero(stream_);
  enqueue(params, grads);
  CUDA_CHECK(cudaMemcpyAsync(host_flag_, skip_.data(), sizeof(int), cudaMemcpyDeviceToHost, stream_));
  CUDA_CHECK(cudaEventRecord(done_, stream_));
  pending_ = true;
}

CudaOptimizer::Outcome CudaOptimizer::outcome() const {
  if (!pending_) return {false, last_applied_};
  coll_->wait_event(done_, name() + " step");
  return {true, *host_flag_ == 0};
}

void CudaOptimizer::save_counters(OptimizerState& s, const Outcome& o) const {
  save_common(s);
  if (o.in_flight) ++s.counters[o.applied ? "step" : "skipped"];
}

bool CudaOptimizer::sync() {
  const Outcome o = outcome();
  if (!o.in_flight) return last_applied_;
  pending_ = false;
  last_applied_ = o.applied;
  if (last_applied_) {
    applied();
    ++step_;
  } else {
    ++skipped_;
  }
  return last_applied_;
}

void CudaOptimizer::check_agreement(const std::vector<std::pair<const char*, double>>& settings) {
  // As agree_across_ranks (optim/options.cpp), through device memory so NCCL can carry it.
  if (comm_.size() == 1) return;
  const Fingerprint mine = fingerprint(layout_, settings, name());
  DeviceArray<Fingerprint> send(std::span<const Fingerprint>(&mine, 1));
  DeviceArray<Fingerprint> all(static_cast<size_t>(comm_.size()));
  coll_->allgather(send.data(), all.data(), sizeof(Fingerprint));
  coll_->wait(name() + " agreement check");
  check_fingerprints(all.download(), settings, comm_.rank(), name());
}

void CudaOptimizer::average_gradients(float* g) { exchange_average(g, layout_.total()); }

// As CpuOptimizer::exchange_average: a non-finite value comes out non-finite either way, and the
// LAMB pass after it sets skip().
void CudaOptimizer::exchange_average(float* x, size_t n) {
  if (comm_.size() == 1) return;
  if (half_) return half_->average(x, n);
  coll_->allreduce_sum(x, n);
  divide(x, n, static_cast<float>(comm_.size()), stream_);
}

void CudaOptimizer::lamb_pass(float* w, float* g, float* m, float* v, const kernels::MomentParams& p,
                              const LambCoefArgs& coef_args) {
  lamb_norms(dpart_, g, m, v, w, p, w_sq_.data(), u_sq_.data(), stream_, skip());
  lamb_coefficients(coef_args, skip(), stream_);
  lamb_update(dpart_, g, m, v, w, p, coef_.data(), stream_, skip());
}

std::vector<float> CudaOptimizer::download(const DeviceArray<float>& a) const {
  coll_->wait(name() + " state");
  return a.download();
}

std::vector<float> CudaOptimizer::decoded(const DevicePartition& part, const kernels::Momentum& m) const {
  DeviceArray<float> out(layout_.total());
  decode_momentum(part, m, out.data(), stream_);
  return download(out);
}

void CudaOptimizer::upload(DeviceArray<float>& a, const OptimizerState& s, const char* key, size_t n) {
  auto it = s.tensors.find(key);
  ONEBIT_CHECK(it != s.tensors.end(), name() << " load_state: the state has no '" << key << "'");
  ONEBIT_CHECK(it->second.size() == n, name() << " load_state: '" << key << "' has "
                                              << it->second.size() << " elements, expected " << n);
  coll_->wait(name() + " load_state");
  a.upload(it->second);
}

// --- CudaLamb ---------------------------------------------------------------------------------

CudaLamb::CudaLamb(const FlatLayout& layout, Communicator& comm, Stream stream, LambOptions options)
    : CudaOptimizer(layout, comm, stream, options.warmup_exchange),
      opt_(options),
      m_(layout.total()),
      v_(layout.total()) {
  validate(opt_, "lamb");
  check_agreement(settings_of(opt_));
  m_.zero(stream_);
  v_.zero(stream_);
}

void CudaLamb::enqueue(float* w, float* g) {
  average_gradients(g);
  const LambCoefArgs c{w_sq_.data(), u_sq_.data(), layout_.num_layers(), opt_.lr, opt_.min_coeff,
                       opt_.max_coeff, true, coef_.data(), nullptr, 0.0f};
  lamb_pass(w, g, m_.data(), v_.data(), moments(opt_), c);
}

OptimizerState CudaLamb::state() const {
  // A step in flight is waited for and reported, not folded in (state() is const).
  OptimizerState s;
  save_counters(s, outcome());
  s.tensors["m"] = download(m_);
  s.tensors["v"] = download(v_);
  return s;
}

void CudaLamb::load_state(const OptimizerState& s) {
  sync();
  load_common(s);
  upload(m_, s, "m", layout_.total());
  upload(v_, s, "v", layout_.total());
}

}  // namespace onebit::cuda
