// FlatLayout: where each layer (one parameter tensor) lives inside one contiguous flat buffer.
#pragma once
#include <cstddef>
#include <string>
#include <vector>

namespace onebit {

struct Layer {
  std::string name;
  size_t offset = 0;  // first element in the flat buffer
  size_t size = 0;    // number of elements
};

// Layers are laid end to end in the order given, without gaps, so the flat buffer is exactly the
// concatenation of the layers and framework tensors can be views into it.
class FlatLayout {
 public:
  FlatLayout() = default;
  explicit FlatLayout(const std::vector<size_t>& sizes, const std::vector<std::string>& names = {});

  const std::vector<Layer>& layers() const { return layers_; }
  size_t num_layers() const { return layers_.size(); }
  size_t total() const { return total_; }
  const Layer& operator[](size_t i) const { return layers_[i]; }

  // Layer boundaries: offsets of every layer followed by total(); size num_layers() + 1.
  std::vector<size_t> boundaries() const;

  // A layout shaped like a BERT encoder with about `params` parameters (for benchmarks): embedding,
  // then repeated attention / feed-forward / layer-norm tensors, scaled to hit the target.
  static FlatLayout bert_like(size_t params);

 private:
  std::vector<Layer> layers_;
  size_t total_ = 0;
};

}  // namespace onebit
