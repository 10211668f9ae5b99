// 1-bit Adam (docs/algorithm.md §5): Adam warmup without bias correction, then frozen variance and
// compressed momentum.
#include "onebit/optimizers.hpp"
#include "options.hpp"

namespace onebit {

OnebitAdam::OnebitAdam(const FlatLayout& layout, Communicator& comm, OnebitAdamOptions options)
    : CpuOptimizer(layout, comm, options.threads, options.warmup_exchange),
      opt_((validate(options, "onebit-adam"), options)),
      freeze_(opt_.freeze_step, opt_.auto_freeze, layout),
      allreduce_(comm, pool_, layout.total(), layout.boundaries(), static_cast<size_t>(opt_.scale_group)) {
  agree_across_ranks(comm, layout, settings_of(opt_), name());
  m_.assign(layout.total(), 0.0f);
  v_.assign(layout.total(), 0.0f);
  coef_.assign(layout.num_layers(), 0.0f);
}

bool OnebitAdam::step(std::span<float> w, std::span<float> g) {
  check_sizes(w, g);
  std::fill(coef_.begin(), coef_.end(), opt_.lr);
  const kernels::MomentParams p = moments(opt_);
  bool done;
  if (in_warmup()) {
    average_gradients(g);
    // The LAMB reduction pass only serves to find a non-finite gradient before anything changes.
    std::vector<double> unused;
    done = lamb_ratios(g.data(), m_.data(), v_.data(), w.data(), p, 1.0f, 1.0f, unused);
    if (done) {
      kernels::lamb_update(part_, pool_, g.data(), m_.data(), v_.data(), w.data(), p, coef_.data());
      freeze_.after_warmup_step(step_ + 1, v_.data(), opt_.beta2, part_, pool_);
    }
  } else {
    freeze_denominator(d_, v_, opt_.eps);
    done = allreduce_.compress_momentum(momentum(), g, opt_.beta1, nullptr);
    if (done) {
      allreduce_.exchange();
      m_in_signs_ = true;  // the momentum is now the exchange's signs
      m_ = {};
      kernels::frozen_update(allreduce_.partition(), pool_, momentum(), d_.data(), w.data(), opt_.weight_decay,
                             coef_.data());
    }
  }
  done ? ++step_ : ++skipped_;
  return done;
}

kernels::Momentum OnebitAdam::momentum() const {
  return m_in_signs_ ? kernels::Momentum{.bits = allreduce_.bits(), .scales = allreduce_.scales()}
                     : kernels::Momentum{.values = m_.data()};
}

OptimizerState OnebitAdam::state() const {
  OptimizerState s;
  save_common(s);
  s.tensors["m"].resize(layout_.total());
  kernels::decode_momentum(allreduce_.partition(), pool_, momentum(), s.tensors["m"].data());
  s.tensors["v"] = plain(v_);
  s.tensors["worker_error"] = allreduce_.worker_error();
  s.tensors["server_error"] = allreduce_.server_error();
  freeze_.save(s.tensors, s.counters);
  return s;
}

void OnebitAdam::load_state(const OptimizerState& s) {
  load_common(s);
  freeze_.load(s.tensors, s.counters, name());
  take(s, "m", m_, layout_.total(), name());
  m_in_signs_ = false;
  take(s, "v", v_, layout_.total(), name());
  d_ = {};
  std::vector<float> we, se;
  take(s, "worker_error", we, layout_.total(), name());
  take(s, "server_error", se, allreduce_.server_error().size(), name());
  allreduce_.set_errors(we, se);
}

}  // namespace onebit
