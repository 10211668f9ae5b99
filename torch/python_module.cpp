// The extension onebit._onebit: communicators (c10d, single rank; NCCL in builds with CUDA), the
// torch optimizers the Python classes drive, and a reference run of the core over in-process ranks
// for the tests.
#include <torch/csrc/utils/pybind.h>

#include <pybind11/stl.h>

#include <algorithm>
#include <atomic>
#include <chrono>

#include "c10d_compat.hpp"
#include "onebit/error.hpp"
#include "onebit/local_comm.hpp"
#include "onebit/nccl_comm.hpp"
#include "onebit/torch_c10d.hpp"
#include "onebit/torch_optimizers.hpp"
#include "onebit/torch_watchdog.hpp"

namespace py = pybind11;
using onebit::Communicator;
using onebit::TorchOptimizer;

namespace {

// Options arrive as a dict with the registry's keys (the Python classes split betas into
// beta1/beta2); None means the default.
onebit::AnyOptions parse_options(const std::string& kind, const py::dict& d) {
  onebit::OptionValues values;
  for (auto item : d) {
    if (item.second.is_none()) continue;
    const auto key = item.first.cast<std::string>();
    if (py::isinstance<py::str>(item.second))
      values[key] = item.second.cast<std::string>();
    else if (py::isinstance<py::bool_>(item.second) || py::isinstance<py::int_>(item.second) ||
             py::isinstance<py::float_>(item.second))
      values[key] = item.second.cast<double>();
    else
      throw onebit::Error(kind + ": option '" + key + "' must be a number or a string, got " +
                          py::str(py::type::handle_of(item.second)).cast<std::string>());
  }
  return onebit::optimizer_kind(kind).parse(values);
}

// Every Communicator handed to Python goes through this. Its last reference may drop while this
// thread holds the GIL (garbage collection, the interpreter's exit), and destroying a c10d
// communicator can drop the last reference to the torch ProcessGroup, whose destructor joins threads
// that may be waiting for the GIL: a deadlock at exit. As torch does for its own c10d objects (its
// IntrusivePtrNoGilDestructor holder), the deleter lets the GIL go first.
std::atomic<int64_t> g_released_without_gil{0};  // for the test that this happens

std::shared_ptr<Communicator> for_python(std::shared_ptr<Communicator> comm) {
  Communicator* raw = comm.get();
  return std::shared_ptr<Communicator>(raw, [owner = std::move(comm)](Communicator*) mutable {
    if (Py_IsInitialized() && PyGILState_Check()) {
      py::gil_scoped_release release;
      if (!PyGILState_Check()) g_released_without_gil.fetch_add(1);
      owner.reset();
    } else {
      owner.reset();
    }
  });
}

// A tensor's bytes, for the raw collectives the tests drive.
std::span<std::byte> bytes_of(const at::Tensor& t, const char* what) {
  ONEBIT_CHECK(t.device().is_cpu() && t.is_contiguous(), "onebit communicator: " << what
                                                          << " must be a contiguous CPU tensor");
  return {static_cast<std::byte*>(t.data_ptr()), t.nbytes()};
}

onebit::c10d_compat::ProcessGroupPtr process_group_of(const py::object& group) {
  try {
    return onebit::c10d_compat::adopt(group.cast<::c10d::ProcessGroup*>());
  } catch (const py::cast_error&) {
    throw onebit::Error("onebit: process_group must be a torch.distributed ProcessGroup, got " +
                        py::str(py::type::handle_of(group)).cast<std::string>() +
                        " (or this extension was built against another torch than the one imported)");
  }
}

std::shared_ptr<Communicator> with_timeout(std::shared_ptr<Communicator> comm, double timeout_s) {
  comm->set_timeout(std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000)));
  return comm;
}

std::shared_ptr<Communicator> c10d_communicator(const py::object& group, double timeout_s,
                                                const std::string& device) {
  return for_python(
      with_timeout(onebit::make_c10d_communicator(process_group_of(group), c10::Device(device)), timeout_s));
}

#ifdef ONEBIT_HAVE_CUDA
std::shared_ptr<Communicator> c10d_device_communicator(const py::object& group, double timeout_s,
                                                       const std::string& device) {
  return for_python(with_timeout(
      onebit::make_c10d_device_communicator(process_group_of(group), c10::Device(device)), timeout_s));
}

std::shared_ptr<Communicator> nccl_communicator(const py::bytes& unique_id, int rank, int size, int device,
                                                double timeout_s) {
  const std::string bytes = unique_id;
  onebit::NcclUniqueId id{};
  ONEBIT_CHECK(bytes.size() == id.size(), "onebit nccl_communicator: the unique id has " << bytes.size()
                                              << " bytes, not " << id.size() << " (use nccl_unique_id())");
  std::copy(bytes.begin(), bytes.end(), id.begin());
  std::shared_ptr<Communicator> comm;
  {
    py::gil_scoped_release release;  // initialization waits for the other ranks
    comm = onebit::make_nccl_communicator(id, rank, size, device, nullptr,
                                          std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000)));
  }
  return for_python(std::move(comm));
}
#endif

// The core optimizer on `world` in-process ranks: rank p starts from params0 and steps with
// grads[p][s]; returns every rank's final parameters ([world, N]).
at::Tensor reference_run(const std::string& kind, const py::dict& options, std::vector<size_t> sizes,
                         const at::Tensor& params0, const at::Tensor& grads) {
  const onebit::FlatLayout layout(sizes);
  const auto N = static_cast<int64_t>(layout.total());
  ONEBIT_CHECK(grads.dim() == 3 && grads.size(2) == N && params0.numel() == N,
               "reference_run: grads must be [world, steps, N] and params0 [N] with N = " << N);
  const at::Tensor g = grads.to(at::kFloat).contiguous();
  const at::Tensor w0 = params0.to(at::kFloat).contiguous();
  const int world = static_cast<int>(g.size(0));
  const int64_t steps = g.size(1);
  at::Tensor out = at::empty({world, N}, at::TensorOptions().dtype(at::kFloat));
  const onebit::AnyOptions parsed = parse_options(kind, options);  // with the GIL: Python objects
  {
    py::gil_scoped_release release;
    onebit::run_local(world, [&](Communicator& comm) {
      std::unique_ptr<onebit::Optimizer> core = onebit::make_optimizer(layout, comm, parsed);
      const int r = comm.rank();
      std::vector<float> w(w0.data_ptr<float>(), w0.data_ptr<float>() + N), gr(static_cast<size_t>(N));
      for (int64_t s = 0; s < steps; ++s) {
        const float* src = g.data_ptr<float>() + (r * steps + s) * N;
        std::copy(src, src + N, gr.begin());
        core->step(w, gr);
      }
      std::copy(w.begin(), w.end(), out.data_ptr<float>() + r * N);
    });
  }
  return out;
}

// (tensors, counters) of the optimizer's complete state, as Python dicts.
py::tuple state_to_python(const TorchOptimizer& o) {
  const onebit::OptimizerState s = o.state();
  py::dict tensors, counters;
  for (const auto& [k, v] : s.tensors) {
    at::Tensor t = at::empty({static_cast<int64_t>(v.size())}, at::TensorOptions().dtype(at::kFloat));
    std::copy(v.begin(), v.end(), t.data_ptr<float>());
    tensors[py::str(k)] = t;
  }
  for (const auto& [k, v] : s.counters) counters[py::str(k)] = v;
  return py::make_tuple(tensors, counters);
}

std::string load_state_from_python(TorchOptimizer& o, const std::map<std::string, at::Tensor>& tensors,
                                   const std::map<std::string, int64_t>& counters, bool reset_errors_on_resize) {
  onebit::OptimizerState s;
  for (const auto& [k, t] : tensors) {
    at::Tensor c = t.detach().to(at::kCPU, at::kFloat).contiguous().reshape({-1});
    s.tensors[k].assign(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
  }
  s.counters = counters;
  return o.load_state(s, reset_errors_on_resize ? onebit::OnResize::kResetErrors : onebit::OnResize::kError);
}

// The registry, for the Python classes and their tests: [{name, summary, compresses, ...,
// options: [{key, doc, default}]}].
py::list optimizer_kinds() {
  py::list out;
  for (const auto& k : onebit::optimizer_kinds()) {
    py::list options;
    for (const auto& o : k.options()) {
      py::dict d;
      d["key"] = o.key, d["doc"] = o.doc, d["default"] = o.default_;
      options.append(d);
    }
    py::dict d;
    d["name"] = k.name, d["summary"] = k.summary, d["compresses"] = k.compresses, d["trust_ratio"] = k.trust_ratio;
    d["momentum_mask"] = k.momentum_mask, d["options"] = options;
    out.append(d);
  }
  return out;
}

// The Communicator class: rank, size, stats and the raw collectives the tests drive.
void def_communicator(py::module_& m) {
  py::class_<Communicator, std::shared_ptr<Communicator>>(m, "Communicator")
      .def_property_readonly("rank", &Communicator::rank)
      .def_property_readonly("size", &Communicator::size)
      .def_property_readonly("backend", &Communicator::backend)
      .def_property_readonly("device_memory", &Communicator::device_memory)
      .def_property("timeout", [](const Communicator& c) { return c.timeout().count() / 1000.0; },
                    [](Communicator& c, double s) {
                      c.set_timeout(std::chrono::milliseconds(static_cast<int64_t>(s * 1000)));
                    })
      .def("stats", [](const Communicator& c) {
        const auto& s = c.stats();
        py::dict d;
        d["bytes_sent"] = s.bytes_sent;
        d["bytes_received"] = s.bytes_received;
        d["calls"] = s.calls;
        d["seconds"] = s.seconds;
        return d;
      })
      .def("reset_stats", &Communicator::reset_stats)
      .def("allreduce_sum", [](Communicator& c, const at::Tensor& t) {
        ONEBIT_CHECK(t.scalar_type() == at::kFloat, "allreduce_sum: the tensor must be float32");
        auto b = bytes_of(t, "allreduce_sum's tensor");
        py::gil_scoped_release release;
        c.allreduce_sum({reinterpret_cast<float*>(b.data()), b.size() / sizeof(float)});
      })
      .def("alltoall", [](Communicator& c, const at::Tensor& send, const at::Tensor& recv) {
        auto s = bytes_of(send, "send"), r = bytes_of(recv, "recv");
        py::gil_scoped_release release;
        c.alltoall(s, r);
      })
      .def("allgather", [](Communicator& c, const at::Tensor& send, const at::Tensor& recv) {
        auto s = bytes_of(send, "send"), r = bytes_of(recv, "recv");
        py::gil_scoped_release release;
        c.allgather(s, r);
      })
      .def("broadcast", [](Communicator& c, const at::Tensor& t, int root) {
        auto b = bytes_of(t, "broadcast's tensor");
        py::gil_scoped_release release;
        c.broadcast(b, root);
      })
      .def("barrier", [](Communicator& c) {
        py::gil_scoped_release release;
        c.barrier();
      });

}

// The ways to get a Communicator: over a torch.distributed group, watched, single rank, NCCL.
void def_communicator_factories(py::module_& m) {
  m.def("c10d_communicator", &c10d_communicator, py::arg("group"), py::arg("timeout") = 60.0,
        py::arg("device") = "cpu", "The Communicator over a torch.distributed ProcessGroup.");
  m.def("watch_ranks", [](std::shared_ptr<Communicator> comm, const std::string& host, int port, const std::string& prefix) {
        const auto timeout = comm->timeout();
        std::shared_ptr<Communicator> watched;
        {
          py::gil_scoped_release release;  // connects to the store
          watched = onebit::watch_ranks(std::move(comm), onebit::tcp_store_connector(host, port, timeout), prefix);
        }
        return for_python(std::move(watched));
      }, py::arg("comm"), py::arg("host"), py::arg("port"), py::arg("prefix") = "onebit",
      "`comm` with its collectives watched through heartbeats in the TCPStore at host:port, so a failed "
      "collective names the lost rank (see include/onebit/torch_watchdog.hpp).");
  m.def("single_rank_communicator",
        [] { return for_python(std::shared_ptr<Communicator>(onebit::make_single_rank_communicator())); });
  m.def("_communicators_released_without_gil", [] { return g_released_without_gil.load(); },
        "How many Communicators this process destroyed with the GIL let go (each one that Python held).");
#ifdef ONEBIT_HAVE_CUDA
  m.attr("built_with_cuda") = true;
  m.def("c10d_device_communicator", &c10d_device_communicator, py::arg("group"), py::arg("timeout") = 60.0,
        py::arg("device"), "The Communicator over an NCCL ProcessGroup on device buffers of `device`.");
  m.def("nccl_unique_id", [] {
    const onebit::NcclUniqueId id = onebit::nccl_unique_id();
    return py::bytes(id.data(), id.size());
  }, "Rank 0 makes it and hands it to every rank of an NCCL world (any channel will do).");
  m.def("nccl_communicator", &nccl_communicator, py::arg("unique_id"), py::arg("rank"), py::arg("size"),
        py::arg("device"), py::arg("timeout") = 60.0, "The NCCL Communicator (device memory, one GPU per rank).");
#else
  m.attr("built_with_cuda") = false;
#endif

}

// Overlap with backward (TorchOptimizer::enable_overlap), for the optimizers' overlap=True.
template <class Class>
void def_overlap(Class& engine) {
  engine.def("enable_overlap", &TorchOptimizer::enable_overlap, py::arg("bucket_bytes"))
      .def("arm_overlap", &TorchOptimizer::arm_overlap)
      .def("disarm_overlap", &TorchOptimizer::disarm_overlap)
      .def("finish_overlap", [](TorchOptimizer& o) {
        onebit::OverlapReport r;
        {
          py::gil_scoped_release release;  // an armed exchange whose backward never ran is waited for
          r = o.finish_overlap();
        }
        py::dict d;
        d["buckets"] = r.buckets;
        d["started_in_backward"] = r.started_in_backward;
        d["exchange_seconds"] = r.exchange_seconds;
        d["waited_seconds"] = r.waited_seconds;
        d["hidden_seconds"] = r.hidden_seconds();
        return d;
      });
}

// The Engine the Python optimizer classes drive: a TorchOptimizer over any registered optimizer.
void def_engine(py::module_& m) {
  py::class_<TorchOptimizer, std::shared_ptr<TorchOptimizer>> engine(m, "Engine");
  def_overlap(engine);
  engine
      .def(py::init([](const std::string& kind, std::vector<at::Tensor> params, const py::dict& options,
                       std::shared_ptr<Communicator> comm) {
             return std::make_shared<TorchOptimizer>(std::move(params), parse_options(kind, options), std::move(comm));
           }),
           py::arg("kind"), py::arg("params"), py::arg("options"), py::arg("comm"))
      .def("step", [](TorchOptimizer& o) {
        py::gil_scoped_release release;
        o.step();
        return o.last_step_applied();
      })
      .def("zero_grad", [](TorchOptimizer& o) { o.zero_grad(); })
      .def("set_lr", [](TorchOptimizer& o, double lr) { o.param_groups().front().options().set_lr(lr); })
      .def_property_readonly("name", [](const TorchOptimizer& o) { return std::string(o.kind().name); })
      .def_property_readonly("steps", [](const TorchOptimizer& o) { return o.core().steps(); })
      .def_property_readonly("skipped", [](const TorchOptimizer& o) { return o.core().skipped(); })
      .def_property_readonly("in_warmup", [](const TorchOptimizer& o) { return o.core().in_warmup(); })
      .def_property_readonly("freeze_step", [](const TorchOptimizer& o) { return o.core().freeze_step(); })
      .def_property_readonly("flat_params", [](TorchOptimizer& o) { return o.flat().params(); })
      .def_property_readonly("flat_grads", [](TorchOptimizer& o) { return o.flat().grads(); })
      .def("is_view", [](TorchOptimizer& o, size_t i) { return o.flat().is_view(i); })
      .def("set_momentum_mask", [](TorchOptimizer& o, size_t i, const c10::optional<at::Tensor>& mask) {
        o.set_momentum_mask(i, mask ? *mask : at::Tensor());
      })
      .def("state", &state_to_python)
      .def("load_state", &load_state_from_python, py::arg("tensors"), py::arg("counters"),
           py::arg("reset_errors_on_resize") = false,
      "Returns a warning when the error buffers were reset for another world size, else ''.");

  m.def("optimizer_kinds", &optimizer_kinds, "The registered optimizers with their options, defaults and docs.");
}

}  // namespace

PYBIND11_MODULE(_onebit, m) {
  m.doc() = "onebit: 1-bit LAMB / 1-bit Adam over torch.distributed (the compiled part)";
  py::register_exception<onebit::Error>(m, "Error", PyExc_RuntimeError);
  m.attr("torch_version_built") = std::to_string(onebit::c10d_compat::kTorchMajor) + "." +
                                  std::to_string(onebit::c10d_compat::kTorchMinor);

  def_communicator(m);
  def_communicator_factories(m);
  def_engine(m);
  m.def("reference_run", &reference_run, py::arg("kind"), py::arg("options"), py::arg("sizes"),
        py::arg("params0"), py::arg("grads"),
        "The core optimizer on in-process ranks (the local backend): [world, N] final parameters.");
}
