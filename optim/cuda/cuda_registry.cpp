// The registry's CUDA constructor (onebit/cuda_optimizers.hpp): each options type to its CUDA twin.
#include "onebit/cuda_optimizers.hpp"

namespace onebit::cuda {

std::unique_ptr<Optimizer> make_optimizer(const FlatLayout& layout, Communicator& comm, Stream stream,
                                          const AnyOptions& options) {
  return std::visit(
      [&](const auto& o) -> std::unique_ptr<Optimizer> {
        using O = std::decay_t<decltype(o)>;
        if constexpr (std::is_same_v<O, LambOptions>) return std::make_unique<CudaLamb>(layout, comm, stream, o);
        if constexpr (std::is_same_v<O, OnebitLambOptions>) return std::make_unique<CudaOnebitLamb>(layout, comm, stream, o);
        if constexpr (std::is_same_v<O, OnebitAdamOptions>) return std::make_unique<CudaOnebitAdam>(layout, comm, stream, o);
      },
      options);
}

}  // namespace onebit::cuda
